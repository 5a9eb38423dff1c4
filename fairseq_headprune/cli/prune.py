"""``fairseq-headprune prune DATA --path CKPT --budget heads:N%|params:N%|latency:Sx
--out SMALL.pt [--order importance|fisher|weight-norm|ablation|random] [--importance FILE]
[--ablation FILE] [--kinds ...] [--min-heads-per-layer N] [--repair none|bias|lstsq|layerwise|refit]``:
export (cli/export.py) with the heads a budget needs, chosen in the order given
(analysis/budget.py; latency budgets at --beam and --latency-batch-size: analysis/latency.py)."""


def main(argv):
    from .export import main as export_main

    return export_main(argv, command="prune")
