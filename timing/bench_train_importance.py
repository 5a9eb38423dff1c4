"""Extra training time of --accumulate-head-importance (issue 13 goal: <= 5% of an epoch).

Builds fairseq's real Trainer in this process (task translation_headprune, the quick
demo's model shape by default: 6+6 layers, 8 heads, d=64) and times
``trainer.train_step`` on the same training batches with the accumulation off and on,
alternating, after a warm-up, several repeats; then the epoch-end cost (sum across
workers, the JSON line) once. Prints seconds per update for both, the ratio, and the
projected share of a full epoch (updates per epoch from the data).

    python timing/bench_train_importance.py DATA_BIN [--updates 30] [--repeats 3]
        [--arch-args "..."] [--max-tokens 4096] [--threads N]
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

DEMO_ARCH = ("--arch transformer_iwslt_de_en --encoder-layers 6 --decoder-layers 6 "
             "--encoder-attention-heads 8 --decoder-attention-heads 8 --encoder-embed-dim 64 "
             "--decoder-embed-dim 64 --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--updates", type=int, default=30, help="updates per timed block")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--arch-args", default=DEMO_ARCH)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)

    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    import fairseq_headprune  # noqa: F401  (registers the task)
    from fairseq_headprune.analysis.workers import Workers

    if a.threads:
        torch.set_num_threads(a.threads)
    save = tempfile.mkdtemp(prefix="bench-train-imp-")
    args = options.parse_args_and_arch(options.get_training_parser(), [
        a.data, "--task", "translation_headprune", *shlex.split(a.arch_args), "--cpu",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "1e-3",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--dropout", "0.1", "--max-tokens", str(a.max_tokens), "--save-dir", save,
        "--accumulate-head-importance", "--seed", "1"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    itr = trainer.get_train_iterator(epoch=1, load_dataset=False).next_epoch_itr(shuffle=True)
    per_epoch = len(itr)
    batches = [next(itr) for _ in range(a.warmup + a.updates)]
    state = task._pruning()

    def block(on: bool, samples) -> float:
        state.accumulate = on
        t0 = time.perf_counter()
        for s in samples:
            trainer.train_step([s])
        return (time.perf_counter() - t0) / len(samples)

    block(False, batches[:a.warmup])
    block(True, batches[:a.warmup])
    timed = batches[a.warmup:]
    off, on = [], []
    for r in range(a.repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for mode in order:
            (on if mode else off).append(block(mode, timed))
        print(f"repeat {r + 1}: off {off[-1]:.4f} s/update, on {on[-1]:.4f} s/update, "
              f"ratio {on[-1] / off[-1]:.4f}", flush=True)
    state.accumulate = True
    t0 = time.perf_counter()
    state.finish_importance(1, trainer.get_num_updates(), model, Workers())
    end = time.perf_counter() - t0
    import statistics

    paired = statistics.median(b / a for a, b in zip(off, on))
    t_off, t_on = min(off), min(on)
    epoch_off = t_off * per_epoch
    share = ((t_on - t_off) * per_epoch + end) / epoch_off
    out = {"seconds_per_update_off": t_off, "seconds_per_update_on": t_on,
           "ratio": t_on / t_off, "median_paired_ratio": paired, "epoch_end_seconds": end, "updates_per_epoch": per_epoch,
           "projected_epoch_overhead": share, "repeats": a.repeats, "updates_per_block": a.updates,
           "threads": torch.get_num_threads(), "arch": a.arch_args, "max_tokens": a.max_tokens}
    print(f"--accumulate-head-importance: {t_on:.4f} vs {t_off:.4f} s/update (best of {a.repeats}), "
          f"ratio {t_on / t_off:.4f} (median of the {a.repeats} paired ratios {paired:.4f}); epoch end {end:.3f} s; {per_epoch} updates per epoch -> "
          f"{100 * share:.2f}% of an epoch (goal <= 5%)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
