"""``python -m fairseq_headprune.cli.arm_summary`` (used by recipes/prune-while-training.sh):
one arm of a comparison as a small JSON file: its checkpoint's heads (kept per kind,
removed as a spec), parameters, the BLEU the recipe measured, and the decode speed-up
from a ``fairseq-headprune bench`` run of the arm's heads removed from the full model.

    python -m fairseq_headprune.cli.arm_summary removed DATA NAME=CKPT ...
    python -m fairseq_headprune.cli.arm_summary arms DATA NAME=CKPT,BLEU[,BENCH_JSON] ... --out DIR
"""

import argparse
import os
import sys

from ..errors import HeadPruneError, install_excepthook
from ..results import read_json, write_json

ARMS = {
    "a": "full model",
    "b": "trained full, heads removed, no fine-tuning",
    "c": "trained full, heads removed, then fine-tuned",
    "d": "pruned gradually during training",
    "e": "half the heads per layer, from scratch",
}


def load(ckpt: str, data: str):
    from fairseq import checkpoint_utils

    import fairseq_headprune  # noqa: F401  (the task, safe loading)

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [ckpt], arg_overrides={"data": data})
    return models[0]


def summary(model) -> dict:
    from ..heads import KINDS, shape_total
    from ..models.head_model import model_head_shape, parameter_counts, removed_heads

    shape, removed = model_head_shape(model), removed_heads(model)
    return {"heads_total": {k: shape_total(shape, (k,)) for k in KINDS if shape.get(k)},
            "heads_kept": {k: shape_total(shape, (k,)) - removed.count(k) for k in KINDS if shape.get(k)},
            "removed_spec": removed.to_spec(),
            "parameters": parameter_counts(model)["total"]}


def bench_speedup(path: str, beam: int = 5) -> dict:
    """The decode speed-up of the ``removed`` variant over ``full`` in a bench.json."""
    rows = [r for r in read_json(path, "bench results")["rows"]
            if r["variant"] == "removed" and r["part"] == "decode" and r["beam"] == beam]
    if not rows:
        raise HeadPruneError(f"{path} has no beam-{beam} decode row of the removed variant")
    r = rows[0]
    return {"speedup": r["speedup"]["median"], "estimate": r["estimate"], "beam": r["beam"],
            "batch_size": r["batch_size"], "tokens_per_s": r["tokens_per_s"]}


def _pairs(items, what):
    out = []
    for item in items:
        name, _, value = item.partition("=")
        if name not in ARMS or not value:
            raise HeadPruneError(f"{what} {item!r} is not NAME=VALUE with NAME one of "
                                 f"{', '.join(sorted(ARMS))}")
        out.append((name, value))
    return out


def main(argv=None):
    from .common import setup_logging

    install_excepthook()
    setup_logging()
    p = argparse.ArgumentParser(prog="arm_summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("removed", help="print 'NAME SPEC' per checkpoint: its removed heads")
    r.add_argument("data")
    r.add_argument("checkpoints", nargs="+", metavar="NAME=CKPT")
    a = sub.add_parser("arms", help="write one JSON file per arm into --out")
    a.add_argument("data")
    a.add_argument("arms", nargs="+", metavar="NAME=CKPT,BLEU[,BENCH_JSON]")
    a.add_argument("--out", required=True, help="folder for NAME.json")
    args = p.parse_args(argv)
    if args.cmd == "removed":
        for name, ckpt in _pairs(args.checkpoints, "checkpoint"):
            print(name, summary(load(ckpt, args.data))["removed_spec"])
        return 0
    os.makedirs(args.out, exist_ok=True)
    for name, value in _pairs(args.arms, "arm"):
        ckpt, bleu, *bench = value.split(",")
        info = summary(load(ckpt, args.data))
        info.update({"arm": name, "label": ARMS[name], "bleu": float(bleu),
                     "checkpoint": os.path.abspath(ckpt)})
        info["speed"] = bench_speedup(bench[0]) if bench and os.path.exists(bench[0]) else None
        write_json(os.path.join(args.out, f"{name}.json"), info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
