"""``fairseq-headprune merge-shards OUT_DIR SHARD_DIR...``: the results of a sweep split
over processes with ``--head-shards N --head-shard-id I`` (``ablate``, ``curve``),
merged into the files one run would have written (see analysis/shards.py).

Every shard folder must hold the same results (ablation*.json, ablation_loss*.json,
curve.json) of shards 0..N-1 of one split, complete, made with the same settings. OUT_DIR
gets the JSON files, the hypotheses and spec files, and the tables and plots drawn from
them (CSV, Markdown, PNG; cross-domain and loss/metric agreement files), as one run
writes them. Nothing is written when a check fails; files OUT_DIR already holds are
replaced only with ``--overwrite``.
"""
# This module also defines the two options of ``ablate`` and ``curve`` (add_shard_args).

import argparse
import os

from ..analysis.shards import SLURM_ENV, plan_merge, resolve_shard
from ..errors import HeadPruneError
from ..results import claim_folder
from .common import nonnegative_int, positive_int


def add_shard_args(group, items: str):
    group.add_argument("--head-shards", type=positive_int, default=None, metavar="N",
                       help=f"split the {items} over N processes (one per GPU, or per job of a "
                            f"Slurm array), each with its own --results-dir; then "
                            f"fairseq-headprune merge-shards OUT_DIR SHARD_DIR...")
    group.add_argument("--head-shard-id", type=nonnegative_int, default=None, metavar="I",
                       help=f"this process's shard, 0 to N-1 (default with --head-shards: "
                            f"${SLURM_ENV})")


def shard_of(args):
    """The command's Shard, or None without --head-shards."""
    return resolve_shard(args.head_shards, args.head_shard_id)


def main(argv):
    p = argparse.ArgumentParser(prog="fairseq-headprune merge-shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the merged results")
    p.add_argument("shard_dirs", metavar="SHARD_DIR", nargs="+",
                   help="the results folders of the N shards (any order)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace merged results that OUT_DIR already holds")

    def error(message):
        raise HeadPruneError(message)

    p.error = error
    args = p.parse_args(argv)
    command = " ".join(["fairseq-headprune", "merge-shards"] + list(argv))
    plan = plan_merge(args.out_dir, args.shard_dirs, command, args.overwrite)
    claim_folder(args.out_dir, command, option="OUT_DIR")
    plan.write()

    from ..analysis import ablation as ab
    from ..report import ablation_report as rep

    for name, obj, _ in plan.ablation_files:
        rep.write_ablation_reports(os.path.join(args.out_dir, name))
        print(f"{name}: merged {plan.n_shards} shards; {ab.summary_line(obj, obj['alpha'])}")
    shown = set()
    for metric, labels in plan.ablation_sets.items():
        for kind, path, obj, text in ab.write_comparisons(args.out_dir, metric, labels):
            if path in shown:  # a loss/metric agreement, written from both ablations
                continue
            shown.add(path)
            if kind == "cross_domain":
                rep.write_cross_domain_plot(path)
                text = rep.cross_domain_text(obj) + f" -> {path}"
            print(text)
    if plan.curves is not None:
        from .curve import write_outputs

        write_outputs(args.out_dir, plan.curves, plan.curve_metrics)
        print(f"curve.json: merged {plan.n_shards} shards, "
              + ", ".join(f"{name} {len(points)} points" for name, points in plan.curves.items()))
    return 0
