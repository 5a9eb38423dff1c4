"""``fairseq-headprune report RESULTS_DIR``: RESULTS_DIR/report.md gathering every
table and plot the commands wrote there (see report/markdown_report.py).

``--redraw`` first draws every plot of RESULTS_DIR again from its results files
(importance.json, curve.json, ablation*.json, cross_domain*.json, dynamics.json or
head_dynamics.jsonl, bench.json), without loading a model: see report/redraw.py."""

import argparse
import os

from ..errors import HeadPruneError
from ..report.markdown_report import build_report
from ..results import claim_folder, clean_temp_files, write_text


def _old_title(path):
    """The title of the report at ``path`` (a redraw keeps the recipe's title), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
    except OSError:
        return None
    return first[2:] if first.startswith("# ") else None


def main(argv):
    p = argparse.ArgumentParser(prog="fairseq-headprune report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results_dir")
    p.add_argument("--out", default=None, help="report file (default: RESULTS_DIR/report.md)")
    p.add_argument("--title", default=None,
                   help="the report's title (default: the title of the report it replaces, "
                   "else 'fairseq-headprune report: RESULTS_DIR')")
    p.add_argument("--redraw", action="store_true",
                   help="rewrite every PNG of RESULTS_DIR from its results files first")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results_dir):
        raise HeadPruneError(f"results folder {args.results_dir!r} does not exist")
    out = os.path.abspath(args.out or os.path.join(args.results_dir, "report.md"))
    if args.redraw or os.path.dirname(out) == os.path.abspath(args.results_dir):
        claim_folder(args.results_dir, option="RESULTS_DIR")
    if os.path.dirname(out) != os.path.abspath(args.results_dir):
        clean_temp_files(os.path.dirname(out), os.path.basename(out))
    if args.redraw:
        from ..report.redraw import redraw_all

        pngs = redraw_all(args.results_dir)
        print(f"redrew {len(pngs)} plot{'s' if len(pngs) != 1 else ''}"
              + (f": {', '.join(os.path.basename(p) for p in pngs)}" if pngs else ""))
    write_text(out, build_report(args.results_dir, args.title or _old_title(out)))
    print(f"report: {out}")
