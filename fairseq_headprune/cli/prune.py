"""``fairseq-headprune prune DATA --path CKPT --budget heads:N%|params:N% --out SMALL.pt
[--order importance|fisher|weight-norm|random] [--importance FILE] [--kinds ...]
[--min-heads-per-layer N] [--repair none|bias|lstsq]``: export (cli/export.py) with the
heads a budget needs, chosen in the order given (analysis/budget.py)."""


def main(argv):
    from .export import main as export_main

    return export_main(argv, command="prune")
