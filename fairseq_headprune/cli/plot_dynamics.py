"""``fairseq-headprune plot-dynamics SAVE_DIR`` (paper §6, Fig. 6)

Reads ``SAVE_DIR/head_dynamics.jsonl`` (written by ``fairseq-train
--task translation_headprune --prune-curve-every-epoch``) and writes, into SAVE_DIR or
``--out-dir``:

* ``dynamics_by_epoch.png``: for each epoch, BLEU relative to that epoch's unpruned BLEU
  against % of heads pruned (Fig. 6 left);
* ``dynamics_by_level.png``: relative BLEU against epoch (log axis), one line per
  pruning level (Fig. 6 right);
* ``dynamics.csv``: epoch, updates, fraction, masked heads, BLEU, relative BLEU,
  sacreBLEU, loss for every point;
* ``dynamics.json``: what was drawn, so ``fairseq-headprune report DIR --redraw``
  redraws it.

Relative BLEU is empty where the epoch's unpruned score is 0. The drawing is
report/dynamics.py; this is its command line.
"""

import argparse
import os

from ..errors import HeadPruneError
from ..results import claim_folder
from .common import logger

DEFAULT_FILE = "head_dynamics.jsonl"  # analysis.dynamics.DEFAULT_FILE


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


def main(argv):
    from ..report.dynamics import draw_from_jsonl

    args = parse(argv)
    path = args.save_dir if args.save_dir.endswith(".jsonl") else os.path.join(args.save_dir, DEFAULT_FILE)
    try:
        levels = [float(x) / 100 for x in args.levels.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or not all(0 <= v <= 1 for v in levels):  # also NaN
        raise HeadPruneError(f"--levels {args.levels!r}: give comma-separated percentages in [0, 100]")
    out = args.out_dir or os.path.dirname(os.path.abspath(path))
    claim_folder(out, option="--out-dir" if args.out_dir else "SAVE_DIR")
    pngs = draw_from_jsonl(path, out, args.metric, levels, args.include_interval)
    logger.info(f"{path} -> {', '.join(pngs)}, {os.path.join(out, 'dynamics.csv')}")
