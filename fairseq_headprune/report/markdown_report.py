"""One Markdown report of a results folder, built from the files the commands wrote
(never from a model): importance heatmaps, pruning curves, keep-one-head and ablation
tables, cross-domain correlation, export sizes, speed, training dynamics, with the
commands and versions that produced them, and the paper's figures beside ours."""

import csv
import glob
import os
from typing import List, Optional

# What the paper reports (PAPER.md), shown beside our numbers.
PAPER = {
    "curve": "WMT en-fr (newstest2013, BLEU 36.05 unpruned): ~20% of heads can be pruned by "
             "importance with no loss, sharp drop past ~60%; BERT ~40%. Importance order "
             "beats ablation order. Per kind: Enc-Dec collapses below ~60% of its heads; E and "
             "D keep ~30 BLEU with 20% of their heads.",
    "one_head": "WMT, keeping one head: Enc-Dec layer 6 -13.56, Enc-Dec layer 5 -1.55, "
                "Enc-Enc layer 1 -1.31 BLEU; most other layers not significant.",
    "ablation": "WMT: only 8 of 96 Enc-Enc heads change BLEU significantly when masked alone "
                "(p < 0.01), half of them improve it.",
    "cross_domain": "WMT newstest2013 vs MTNT: Pearson r = 0.56 (BERT MNLI matched vs "
                    "mismatched: 0.68).",
    "bench": "BERT, 50% of heads removed: +17.5% examples/s at batch 16 and 64, +1.9% at "
             "batch 1, +2.7% at batch 4 (GTX 1080Ti).",
    "budgets": "the paper prunes by importance with no repair. Kwon et al. 2022 (BERT-base and "
               "DistilBERT on GLUE/SQuAD; Fisher scores, latency lookup table, least-squares mask "
               "tuning, no retraining): up to 2.0x fewer FLOPs and 1.56x lower latency at < 1% "
               "accuracy loss.",
    "dynamics": "IWSLT de-en: epochs 1-2 BLEU falls linearly with the share pruned; from "
                "~epoch 10, 40% of heads can go keeping 85-90% of BLEU.",
}


def _checker(name: str):
    """The check ``report --redraw`` applies to this kind of results file (one line for a
    file of the wrong shape, never a traceback or a silently skipped section)."""
    from . import redraw

    if name == "bench.json":
        from .bench import check_bench

        return check_bench
    if name == "budgets.json":
        from .budgets import check_budgets

        return check_budgets
    return {"importance.json": redraw.check_importance, "curve.json": redraw.check_curve,
            "ablation.json": redraw.check_ablation}.get(
        name, redraw.check_cross_domain if name.startswith("cross_domain") else None)


def _read_json(path):
    """A results file of the folder, checked; None when there is none."""
    from ..results import read_json

    if not os.path.exists(path):
        return None
    obj = read_json(path)
    check = _checker(os.path.basename(path))
    if check is not None:
        check(obj, path)
    return obj


def csv_table(path: str, max_rows: int = 60, columns: Optional[List[str]] = None) -> str:
    """A CSV file as a Markdown table (numbers rounded to 3 decimals)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    keep = [i for i, h in enumerate(header) if columns is None or h in columns]

    def fmt(v):
        try:
            x = float(v)
            return v if x.is_integer() and "." not in v else f"{x:.3f}"
        except ValueError:
            return v

    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    for r in body[:max_rows]:
        lines.append("| " + " | ".join(fmt(r[i]) if i < len(r) else "" for i in keep) + " |")
    if len(body) > max_rows:
        lines.append(f"\n({len(body) - max_rows} more rows in `{os.path.basename(path)}`)")
    return "\n".join(lines)


def _img(results_dir, name, alt=None):
    return f"![{alt or name}]({name})" if os.path.exists(os.path.join(results_dir, name)) else ""


def _provenance(obj) -> List[str]:
    meta = (obj or {}).get("meta") or {}
    out = []
    if meta.get("command"):
        out.append(f"`{meta['command']}`")
    if meta.get("versions"):
        out.append(", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    return out


def paper(d: str, key: str) -> str:
    """The paper's finding for section ``key``: on BERT (MNLI) for a classifier's results
    folder, else on its translation models."""
    from .findings import PAPER as BY_METRIC, _metric

    bert = BY_METRIC["accuracy"]
    if key in bert and _metric(d) == "accuracy":
        return bert[key]
    return PAPER[key]


def _section_importance(d):
    obj = _read_json(os.path.join(d, "importance.json"))
    if obj is None:
        return None
    c = obj.get("counts", {})
    meta = obj.get("meta") or {}
    subset = meta.get("importance_subset") or (meta.get("importance_data") or {}).get("subset", "?")
    text = [f"Estimated on `{subset}` ({c.get('sentences', '?')} sentences), |.| per "
            f"{obj.get('granularity')}, "
            f"{'l2-normalised per layer' if obj.get('normalize') else 'not normalised'}."]
    text += [_img(d, f"importance_{k}.png") for k in "EAD"]
    return "Head importance", text, obj


def _section_curve(d):
    obj = _read_json(os.path.join(d, "curve.json"))
    if obj is None:
        return None
    from .redraw import curve_data, curve_metric

    s = obj.get("settings", {})
    metric = curve_metric(s)
    unit = "BLEU" if metric == "bleu" else metric
    curves = obj.get("curves", {})
    names = list(curves)
    fracs = sorted({p["fraction"] for pts in curves.values() for p in pts})
    lines = ["| % heads masked | " + " | ".join(f"{unit} ({n})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for fr in fracs:
        cells = []
        for n in names:
            p = next((p for p in curves[n] if p["fraction"] == fr), None)
            cells.append(f"{p[metric]:.2f}" if p else "")
        lines.append(f"| {100 * fr:.0f} | " + " | ".join(cells) + " |")
    text = [f"Order: {s.get('order')}{' (re-estimated each step)' if s.get('reestimate') else ''}; "
            f"scored on {curve_data(s)}; "
            f"{'tokenized BLEU' if metric == 'bleu' else metric + ' (%)'}.", "\n".join(lines),
            _img(d, "curve.png"), f"*Paper:* {paper(d, 'curve')}"]
    return "Pruning curves", text, obj


def _included(path: str) -> str:
    """A Markdown file's text, its headings moved below the section that includes it."""
    with open(path, encoding="utf-8") as f:
        return "\n".join("##" + line if line.startswith("#") else line
                         for line in f.read().strip().splitlines())


def _section_md(d, json_name, md_name, title, paper_key, images=()):
    obj = _read_json(os.path.join(d, json_name))
    md = os.path.join(d, md_name)
    if obj is None or not os.path.exists(md):
        return None
    text = [_included(md)] + [_img(d, i) for i in images]
    text.append(f"*Paper:* {paper(d, paper_key)}")
    return title, text, obj


def _per_file(d, pattern, title, render, paper_key=None):
    """One block per results file matching ``pattern`` (e.g. several cross-domain pairs
    or several exports); the first file's provenance stands for the section."""
    files = sorted(glob.glob(os.path.join(d, pattern)))
    if not files:
        return None
    text, first = [], None
    for path in files:
        obj = _read_json(path) or {}
        first = first or obj
        text += render(d, path, obj)
    if paper_key:
        text.append(f"*Paper:* {paper(d, paper_key)}")
    return title, text, first


def _render_cross_domain(d, path, obj):
    r = {k: obj[k] for k in ("a", "b", "metric", "n", "pearson", "spearman", "significant_only_a",
                             "significant_only_b") if k in obj}
    line = f"`{os.path.basename(path)}`: " + ", ".join(
        f"{k} = {v:.3f}" if isinstance(v, float) else f"{k} = {v}" for k, v in r.items())
    return [line, _img(d, os.path.basename(path)[:-5] + ".png")]


def _render_export(d, path, obj):
    """Parameter counts before/after, in total, per kind and for the heads."""
    params = obj.get("parameters") or {}
    rows = ["| | before | after | removed | share removed |", "|---|---|---|---|---|"]
    for part, label in (("total", "all parameters"), ("attention", "attention"), ("heads", "heads")):
        entries = {"": params[part]} if part == "total" and part in params else params.get(part, {})
        for kind, r in entries.items():
            if isinstance(r, dict) and "before" in r:
                share = r.get("share_removed", {})
                share = share.get("fraction") if isinstance(share, dict) else share
                rows.append(f"| {label} {kind} | {r['before']:,} | {r['after']:,} | {r['removed']:,} | "
                            f"{100 * (share or 0):.1f}% |")
    removed = (obj.get("removed_in_all") or {}).get("spec", "")
    return [f"`{os.path.basename(path)}` (removed: `{removed}`)", "\n".join(rows)]


def _section_cross_domain(d):
    return _per_file(d, "cross_domain*.json", "Cross-domain comparison", _render_cross_domain,
                     "cross_domain")


def _section_export(d):
    return _per_file(d, "*.export.json", "Exported pruned checkpoints", _render_export)


def _section_bench(d):
    path = os.path.join(d, "bench.csv")
    if not os.path.exists(path):
        return None
    obj = _read_json(os.path.join(d, "bench.json"))
    if obj is None:
        return "Speed", [csv_table(path), _img(d, "bench.png"), f"*Paper:* {PAPER['bench']}"], None
    from .bench import heads_label, short_table

    s = obj.get("settings") or {}
    text = [f"{heads_label(obj).capitalize()}; median of {s.get('repeats', '?')} timed rounds "
            f"on {s.get('device', '?')} ({s.get('threads', '?')} threads), "
            f"{s.get('bench_sentences', '?')} sentences of {s.get('subset', '?')}"
            + (f", {s['fixed_length']} tokens per hypothesis" if s.get("fixed_length") else "")
            + ". Every measurement, with quartiles and the work counted: `bench.csv`.",
            short_table(obj), _img(d, "bench.png"), f"*Paper:* {PAPER['bench']}"]
    return "Speed", text, obj


def _section_dynamics(d):
    pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "*dynamics*.png")))
    csvs = sorted(glob.glob(os.path.join(d, "*dynamics*.csv")))
    if not pngs and not csvs:
        return None
    text = [_img(d, p) for p in pngs] + [csv_table(c, 40) for c in csvs[:1]]
    text.append(f"*Paper:* {PAPER['dynamics']}")
    return "Training dynamics", text, None


def _section_findings(d):
    path = os.path.join(d, "findings.md")
    if not os.path.exists(path):
        return None
    return "The paper's findings against ours", [_included(path)], None


SECTIONS = [
    _section_findings,
    _section_importance,
    _section_curve,
    lambda d: _section_md(d, "one_head.json", "one_head.md", "Keeping one head per layer",
                          "one_head"),
    lambda d: _section_md(d, "ablation.json", "ablation.md", "Single-head ablation", "ablation",
                          images=[f"ablation_{k}.png" for k in "EAD"]),
    _section_cross_domain,
    _section_export,
    _section_bench,
    lambda d: _section_md(d, "budgets.json", "budgets.md", "Budgets without retraining", "budgets",
                          images=["budgets.png"]),
    _section_dynamics,
]


def build_report(results_dir: str) -> str:
    parts = [f"# fairseq-headprune report: `{os.path.abspath(results_dir)}`", ""]
    provenance = []
    found = 0
    for make in SECTIONS:
        section = make(results_dir)
        if section is None:
            continue
        found += 1
        title, text, obj = section
        parts += [f"## {title}", ""]
        for t in text:
            if t:
                parts += [t, ""]
        provenance += _provenance(obj)
    if not found:
        from ..errors import HeadPruneError

        raise HeadPruneError(f"{results_dir!r} holds no fairseq-headprune results "
                             f"(importance.json, curve.json, ablation.json, ...)")
    if provenance:
        parts += ["## How these results were produced", ""]
        parts += [f"- {p}" for p in dict.fromkeys(provenance)]
    return "\n".join(parts) + "\n"
