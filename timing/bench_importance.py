#!/usr/bin/env python3
"""Cost of the importance pass vs a forward+backward with parameter gradients.

Both run on the same batches, model in eval mode (no dropout), same loss (summed
token NLL of the reference). The importance pass computes only ∂L/∂ξ (parameters
frozen, torch.autograd.grad on the head gates). Prints median times over repeats after
warm-up, and the ratio (goal: <= 0.7).

  python timing/bench_importance.py DATA_BIN [--arch transformer_iwslt_de_en]
      [--heads 8] [--layers 6] [--subset valid] [--max-tokens 4000] [--batches 8]
"""

import argparse
import sys

import torch


def build_model(data, arch, layers, heads, dim):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_headprune  # noqa: F401

    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--task", "translation_headprune", "--arch", arch, "--cpu",
        "--encoder-layers", str(layers), "--decoder-layers", str(layers),
        "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
        "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
        "--encoder-ffn-embed-dim", str(4 * dim), "--decoder-ffn-embed-dim", str(4 * dim)])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return cfg, task, task.build_model(cfg.model).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--arch", default="transformer_iwslt_de_en")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--subset", default="valid")
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)

    from fairseq_headprune.analysis.data import DataSpec, collate, select
    from fairseq_headprune.analysis.importance import compute_importance
    from fairseq_headprune.analysis.speed import summarize, time_interleaved
    from fairseq_headprune.criterions import sentence_nll

    _, task, model = build_model(a.data, a.arch, a.layers, a.heads, a.dim)
    # N of fairseq's batches of the subset, drawn in a seeded order (data.select)
    spec = DataSpec(a.subset, max_batches=a.batches, max_tokens=a.max_tokens)
    batches = collate(task, a.subset, select(task, [model], spec).batches)
    ntok = sum(int(b["ntokens"]) for b in batches)

    def full_backward():
        model.zero_grad(set_to_none=True)
        for b in batches:
            sentence_nll(model, b).sum().backward()

    def importance_pass():
        compute_importance(model, batches)

    # the bench command's timing loop: the two take turns, so that drifts in machine
    # load hit both alike
    times = time_interleaved({"full": full_backward, "importance": importance_pass},
                             a.warmup, a.repeats)
    t_full, t_imp = times["full"], times["importance"]
    mf, mi = summarize(t_full)["median"], summarize(t_imp)["median"]
    print(f"model: {a.arch} {a.layers}+{a.layers} layers, {a.heads} heads, d={a.dim}; "
          f"{len(batches)} batches, {ntok} target tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"forward+backward (parameter grads): median {mf:.3f}s  (min {min(t_full):.3f}, max {max(t_full):.3f})")
    print(f"importance pass (gate grads only):  median {mi:.3f}s  (min {min(t_imp):.3f}, max {max(t_imp):.3f})")
    print(f"ratio importance / forward+backward: {mi / mf:.3f}  (goal <= 0.70)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
