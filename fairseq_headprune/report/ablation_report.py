"""Tables and plots of single-head ablations, drawn from the JSON files only.

For ``X.json`` (an ablation file, see analysis/ablation.py)::

    X.csv        one row per head: kind, layer, head, score, delta, p_value, significant, identical
    X.md         the paper's Table 1 style: per kind, rows = layers, columns = heads,
                 cells = delta, significant cells in bold
    X_E.png ...  one heatmap per kind (layers x heads, colour = delta, '*' = significant)

For a cross-domain file ``C.json``: ``C.png``, the scatter of the two delta vectors.

Command line (regenerate from files, or compare two existing ablation files)::

    python -m fairseq_headprune.report.ablation_report DIR/ablation.json [...]
    python -m fairseq_headprune.report.ablation_report --compare A.json B.json --out C.json
"""

import argparse
import os
import sys
from typing import List, Optional

from ..heads import KIND_NAMES, KINDS
from ..results import read_json, write_csv, write_json, write_text
from . import plots

METRIC_NAMES = {"bleu": "BLEU (tokenized)", "sacrebleu": "sacreBLEU (detokenized)",
                "chrf": "chrF", "loss": "loss (bits/token)"}


def _stem(path: str) -> str:
    return path[:-5] if path.endswith(".json") else path


def _grid(obj: dict, kind: str, key: str):
    """[layers][heads] of rec[key] (None where the head was not ablated)."""
    counts = obj["shape"].get(kind) or []
    grid = [[None] * n for n in counts]
    for r in obj["heads"]:
        if r["kind"] == kind:
            grid[r["layer"] - 1][r["head"] - 1] = r[key]
    return grid


def _kinds(obj: dict) -> List[str]:
    present = {r["kind"] for r in obj["heads"]}
    return [k for k in KINDS if k in present]


def csv_rows(obj: dict):
    for r in obj["heads"]:
        yield [r["kind"], r["layer"], r["head"], f"{r['score']:.6f}", f"{r['delta']:.6f}",
               f"{r['p_value']:.6f}", int(r["significant"]), int(r["identical"])]


def markdown(obj: dict) -> str:
    s = obj["settings"]
    metric = s["metric"]
    b = obj["baseline"]
    lines = [
        f"# Single-head ablation: {os.path.basename(s['checkpoint'])} on {s['subset']}",
        "",
        f"Full model: {METRIC_NAMES.get(metric, metric)} {b['score']:.2f} on "
        f"{b['n_sentences']} sentences of `{s['subset']}` ({s['data']}).",
        f"Cells: {METRIC_NAMES.get(metric, metric)} with the head masked minus the full "
        f"model. **Bold**: significant, paired bootstrap p < {obj['alpha']:g} "
        f"({s['n_samples']} resamples, seed {s['seed']}); a head whose masking changes no "
        f"output is never significant.",
    ]
    if not obj.get("complete"):
        lines += ["", f"**Incomplete**: {len(obj['heads'])} heads done of `{obj['requested']}`."]
    for kind in _kinds(obj):
        delta, sig = _grid(obj, kind, "delta"), _grid(obj, kind, "significant")
        n = max(len(row) for row in delta)
        lines += ["", f"## {KIND_NAMES[kind]} ({kind})", "",
                  "| Layer | " + " | ".join(str(h + 1) for h in range(n)) + " |",
                  "|---:|" + "---:|" * n]
        for layer, (row, srow) in enumerate(zip(delta, sig), 1):
            cells = []
            for v, sg in zip(row, srow):
                if v is None:
                    cells.append("")
                else:
                    txt = f"{v:+.2f}" if metric != "loss" else f"{v:+.3f}"
                    cells.append(f"**{txt}**" if sg else txt)
            cells += [""] * (n - len(cells))
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        rs = [r for r in obj["heads"] if r["kind"] == kind]
        sg = [r for r in rs if r["significant"]]
        lines += ["", f"Significant: {len(sg)} of {len(rs)} heads "
                      f"({sum(1 for r in sg if r['better'])} better, "
                      f"{sum(1 for r in sg if not r['better'])} worse without the head)."]
    return "\n".join(lines) + "\n"


def write_ablation_reports(json_path: str) -> List[str]:
    """CSV, Markdown and one heatmap per kind next to ``json_path``."""
    obj = read_json(json_path, "ablation results file")
    stem = _stem(json_path)
    metric = obj["settings"]["metric"]
    out = [write_csv(stem + ".csv", ["kind", "layer", "head", "score", "delta", "p_value",
                                     "significant", "identical"], csv_rows(obj)),
           write_text(stem + ".md", markdown(obj))]
    label = "Δ " + METRIC_NAMES.get(metric, metric)
    for kind in _kinds(obj):
        out.append(plots.heatmap(
            _grid(obj, kind, "delta"), f"{stem}_{kind}.png",
            f"{KIND_NAMES[kind]}: {label} without the head ({obj['settings']['subset']})",
            cbar_label=label, marks=_grid(obj, kind, "significant"),
            cmap="RdBu_r" if metric == "loss" else "RdBu", center_zero=True,
            fmt="{:+.3f}" if metric == "loss" else "{:+.2f}"))
    return out


def write_cross_domain_plot(json_path: str) -> str:
    c = read_json(json_path, "cross-domain file")
    r = c.get("pearson")
    title = (f"single-head ablation, {c['a']} vs {c['b']}: "
             + (f"Pearson r = {r:.2f}" if r is not None else "Pearson r undefined"))
    unit = "Δ " + METRIC_NAMES.get(c["metric"], c["metric"])
    return plots.scatter(c["delta_a"], c["delta_b"], _stem(json_path) + ".png", title,
                         f"{unit} on {c['a']}", f"{unit} on {c['b']}", labels=c["heads"])


def cross_domain_text(c: dict) -> str:
    """The comparison in a sentence: how alike the per-head changes are on the two sets,
    and which heads are significant on one only."""
    def r(v):
        return "undefined" if v is None else f"{v:.2f}"

    label = METRIC_NAMES.get(c["metric"], c["metric"])
    alpha = f" (p < {c['alpha']:g})" if c.get("alpha") else ""
    kinds = "; ".join(f"{KIND_NAMES.get(k, k)} {r(v.get('pearson'))}"
                      for k, v in (c.get("per_kind") or {}).items() if v.get("pearson") is not None)
    return (f"cross-domain {c['a']} vs {c['b']} ({c['n']} heads, {c['metric']}): change in "
            f"{label} when one head is masked (full model {c['a_baseline']:.2f} on {c['a']}, "
            f"{c['b_baseline']:.2f} on {c['b']}), Pearson r {r(c['pearson'])}, Spearman rank "
            f"correlation {r(c['spearman'])}" + (f" (Pearson r per kind: {kinds})" if kinds else "")
            + (" (every head's change is the same on one set: no correlation is defined)"
               if c["pearson"] is None else "")
            + f". Significant{alpha} on {c['a']} only: {c['significant_only_a'] or 'none'}; "
            f"on {c['b']} only: {c['significant_only_b'] or 'none'}; on both: "
            f"{c['significant_both'] or 'none'}.")


def main(argv: Optional[List[str]] = None) -> int:
    from ..analysis.ablation import cross_domain

    p = argparse.ArgumentParser(prog="python -m fairseq_headprune.report.ablation_report",
                                description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", help="ablation JSON files to draw tables/plots for")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="write the cross-domain comparison of two ablation files")
    p.add_argument("--out", default="cross_domain.json", help="cross-domain file (with --compare)")
    a = p.parse_args(argv)
    for f in a.files:
        for path in write_ablation_reports(f):
            print(path)
    if a.compare:
        objs = [read_json(f, "ablation results file") for f in a.compare]
        c = cross_domain(objs[0], objs[1], a.compare[0], a.compare[1])
        write_json(a.out, c)
        print(a.out)
        print(write_cross_domain_plot(a.out))
        print(cross_domain_text(c))
    return 0


if __name__ == "__main__":
    import fairseq_headprune.errors as _errors

    _errors.install_excepthook()
    sys.exit(main())
