"""``fairseq-headprune SUBCOMMAND ...``: the paper's experiments as commands."""

import importlib
import os
import signal
import sys

SUBCOMMANDS = {
    "importance": ("importance", "head importance I_h = E|dL/dxi_h| (JSON, CSV, heatmaps)"),
    "curve": ("curve", "mask the least important heads 0..100%, score each step"),
    "one-head": ("one_head", "keep only the best head in one layer at a time (paper Table 2)"),
    "ablate": ("ablate", "mask one head at a time, delta and paired bootstrap (paper Table 1)"),
    "merge-shards": ("merge_shards", "merge the results of --head-shards runs of ablate or curve"),
    "export": ("export", "write a checkpoint with heads physically removed"),
    "prune": ("prune", "export the heads a budget (heads:N%, params:N%, latency:Sx) removes, repaired or not"),
    "compare-budgets": ("compare_budgets", "every budget x order x repair, scored (table, plot)"),
    "bench": ("bench", "decoding speed of full, masked and pruned models"),
    "plot-dynamics": ("plot_dynamics", "plots of per-epoch pruning curves from training"),
    "report": ("report", "one Markdown report of a results folder"),
    "user-dir": (None, "print the --user-dir path to pass to fairseq tools"),
}


def usage() -> str:
    lines = ["usage: fairseq-headprune SUBCOMMAND [options]  (SUBCOMMAND --help for its options)", ""]
    lines += [f"  {name:14s} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name = argv.pop(0)
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"fairseq-headprune: error: unknown subcommand {name!r} "
                         f"(allowed: {', '.join(SUBCOMMANDS)})\n")
        return 2
    if name == "user-dir":
        import fairseq_headprune

        print(os.path.dirname(os.path.abspath(fairseq_headprune.__file__)))
        return 0
    import fairseq_headprune  # noqa: F401  (registers the task, installs fairseq_fixes)
    from ..errors import install_excepthook

    install_excepthook()  # also where fairseq is missing (report works without it)
    from .common import setup_logging

    setup_logging()
    module = importlib.import_module(f"fairseq_headprune.cli.{SUBCOMMANDS[name][0]}")
    from ..results import release_all

    # SIGTERM as SIGINT: unwinds, so the results folder's lock is released (exit 143)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return module.main(argv) or 0
    finally:
        release_all()  # before the excepthook's os._exit of a one-line error


if __name__ == "__main__":
    sys.exit(main())
