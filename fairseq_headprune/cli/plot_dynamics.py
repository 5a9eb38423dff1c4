"""``fairseq-headprune plot-dynamics SAVE_DIR`` (paper §6, Fig. 6)

Reads ``SAVE_DIR/head_dynamics.jsonl`` (written by ``fairseq-train
--task translation_headprune --prune-curve-every-epoch``) and writes, into SAVE_DIR or
``--out-dir``:

* ``dynamics_by_epoch.png``: for each epoch, BLEU relative to that epoch's unpruned BLEU
  against % of heads pruned (Fig. 6 left);
* ``dynamics_by_level.png``: relative BLEU against epoch (log axis), one line per
  pruning level (Fig. 6 right);
* ``dynamics.csv``: epoch, updates, fraction, masked heads, BLEU, relative BLEU,
  sacreBLEU, loss for every point.

Relative BLEU is empty where the epoch's unpruned score is 0.
"""

import argparse
import os

from ..analysis.dynamics import DEFAULT_FILE, read_lines
from ..errors import HeadPruneError
from ..results import write_csv
from .common import logger


def parse(argv):
    p = argparse.ArgumentParser(prog="fairseq-headprune plot-dynamics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("save_dir", metavar="SAVE_DIR", help="fairseq-train --save-dir (or the .jsonl file)")
    p.add_argument("--out-dir", default=None, help="where to write (default: SAVE_DIR)")
    p.add_argument("--metric", choices=("bleu", "sacrebleu"), default="bleu",
                   help="bleu: tokenized BLEU (the paper's, default); sacrebleu: detokenized")
    p.add_argument("--levels", default="10,20,30,40,50,60,70,80,90",
                   help="pruning levels (%%) drawn against epoch (default 10,...,90)")
    p.add_argument("--include-interval", action="store_true",
                   help="also draw --prune-curve-interval-updates lines (default: epoch ends only)")
    return p.parse_args(argv)


def rows_of(lines, metric):
    rows = []
    for line in lines:
        base = line["unpruned"][metric]
        for p in line["curve"]:
            rel = p[metric] / base if base > 0 else None
            rows.append((line["epoch"], line["updates"], p["fraction"], p["masked"], p["bleu"],
                         rel, p["sacrebleu"], p["loss"]))
    return rows


def main(argv):
    from ..report.plots import lines as plot_lines

    args = parse(argv)
    path = args.save_dir if args.save_dir.endswith(".jsonl") else os.path.join(args.save_dir, DEFAULT_FILE)
    if not os.path.isfile(path):
        raise HeadPruneError(f"{path!r} does not exist (train with --prune-curve-every-epoch)")
    out = args.out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out, exist_ok=True)
    lines = [l for l in read_lines(path) if args.include_interval or l.get("end_of_epoch", True)]
    if not lines:
        raise HeadPruneError(f"{path!r} has no end-of-epoch lines")
    try:
        levels = [float(x) / 100 for x in args.levels.split(",") if x.strip()]
    except ValueError:
        raise HeadPruneError(f"--levels {args.levels!r}: give comma-separated percentages")
    rows = rows_of(lines, args.metric)
    write_csv(os.path.join(out, "dynamics.csv"),
              ["epoch", "updates", "fraction", "masked", "bleu", f"relative_{args.metric}",
               "sacrebleu", "loss"], rows)

    def label(l):
        return f"epoch {l['epoch']}" if l.get("end_of_epoch", True) else f"update {l['updates']}"

    def rel(line, p):
        base = line["unpruned"][args.metric]
        return p[args.metric] / base if base > 0 else None

    by_epoch = {label(l): [(100 * p["share_masked"], rel(l, p)) for p in l["curve"]] for l in lines}
    plot_lines(by_epoch, os.path.join(out, "dynamics_by_epoch.png"),
               f"{args.metric.upper()} relative to the unpruned model, per epoch",
               "% of heads pruned", f"relative {args.metric.upper()}", hline=1.0)
    by_level = {}
    for lev in levels:
        pts = []
        for l in lines:
            p = next((p for p in l["curve"] if abs(p["fraction"] - lev) < 1e-6), None)
            if p is not None:
                pts.append((l["epoch"] if l.get("end_of_epoch", True) else l["updates"], rel(l, p)))
        if pts:
            by_level[f"{round(100 * lev)}% pruned"] = pts
    if not by_level:
        raise HeadPruneError(f"--levels {args.levels}: no such points in {path!r}")
    plot_lines(by_level, os.path.join(out, "dynamics_by_level.png"),
               f"relative {args.metric.upper()} during training", "epoch",
               f"relative {args.metric.upper()}", logx=True)
    logger.info(f"{len(lines)} epochs -> {out}/dynamics_by_epoch.png, dynamics_by_level.png, dynamics.csv")
