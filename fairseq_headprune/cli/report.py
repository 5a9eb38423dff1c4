"""``fairseq-headprune report RESULTS_DIR``: RESULTS_DIR/report.md gathering every
table and plot the commands wrote there (see report/markdown_report.py)."""

import argparse
import os

from ..errors import HeadPruneError
from ..report.markdown_report import build_report
from ..results import write_text


def main(argv):
    p = argparse.ArgumentParser(prog="fairseq-headprune report", description=__doc__)
    p.add_argument("results_dir")
    p.add_argument("--out", default=None, help="report file (default: RESULTS_DIR/report.md)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results_dir):
        raise HeadPruneError(f"results folder {args.results_dir!r} does not exist")
    out = args.out or os.path.join(args.results_dir, "report.md")
    write_text(out, build_report(args.results_dir))
    print(f"report: {out}")
