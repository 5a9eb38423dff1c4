"""One Markdown report of a results folder, built from the files the commands wrote
(never from a model): importance heatmaps, pruning curves, keep-one-head and ablation
tables, cross-domain correlation, export sizes, speed, training dynamics, with the
commands and versions that produced them, and the paper's figures beside ours."""

import csv
import glob
import os
from typing import List, Optional

from ..analysis.scoring import METRIC_LABELS
from ..heads import KINDS

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
    from .ablation_report import cross_domain_text

    text = cross_domain_text(obj)
    return [text[0].upper() + text[1:], _img(d, os.path.basename(path)[:-5] + ".png")]


def _export_row(path, obj) -> str:
    """One exported checkpoint: heads and parameters before -> after, per kind."""
    params = obj.get("parameters") or {}

    def share(r):
        x = r.get("share_removed")
        return 100 * ((x.get("fraction") if isinstance(x, dict) else x) or 0)

    heads = params.get("heads") or {}
    kinds = ", ".join(f"{k} {r['before']} -> {r['after']}" for k, r in heads.items()
                      if k in KINDS and isinstance(r, dict) and "before" in r)
    cells = [f"`{os.path.basename(path)[:-len('.export.json')]}.pt`", kinds or "?"]
    for r in (params.get("attention", {}).get("all"), params.get("total")):
        cells.append(f"{r['before']:,} -> {r['after']:,} (-{share(r):.1f}%)"
                     if isinstance(r, dict) and "before" in r else "?")
    return "| " + " | ".join(cells) + " |"


def _section_cross_domain(d):
    return _per_file(d, "cross_domain*.json", "Cross-domain comparison", _render_cross_domain,
                     "cross_domain")


def _section_export(d):
    files = sorted(glob.glob(os.path.join(d, "*.export.json")))
    if not files:
        return None
    objs = [_read_json(f) or {} for f in files]
    rows = ["| checkpoint | heads kept per kind | attention parameters | all parameters |",
            "|---|---|---|---|"] + [_export_row(f, o) for f, o in zip(files, objs)]
    specs = [f"`{os.path.basename(f)[:-len('.export.json')]}.pt`: "
             f"`{(o.get('removed_in_all') or {}).get('spec', '?')}`" for f, o in zip(files, objs)]
    return ("Exported pruned checkpoints",
            ["\n".join(rows), "Heads removed (kind:layer:heads): " + "; ".join(specs) + "."],
            objs[0])


def _section_bench(d):
    path = os.path.join(d, "bench.csv")
    if not os.path.exists(path):
        return None
    obj = _read_json(os.path.join(d, "bench.json"))
    if obj is None:
        return "Speed", [csv_table(path), _img(d, "bench.png"), f"*Paper:* {PAPER['bench']}"], None
    from .bench import heads_label, short_table

    s = obj.get("settings") or {}
    rounds, threads = s.get("repeats", "?"), s.get("threads", "?")
    text = [f"{heads_label(obj).capitalize()}; median of {rounds} timed "
            f"round{'' if rounds == 1 else 's'} on {s.get('device', '?')} ({threads} "
            f"thread{'' if threads == 1 else 's'}), "
            f"{s.get('bench_sentences', '?')} sentences of {s.get('subset', '?')}"
            + (f", {s['fixed_length']} tokens per hypothesis" if s.get("fixed_length") else "")
            + ". Every measurement, with quartiles and the work counted: `bench.csv`.",
            short_table(obj), _img(d, "bench.png"), f"*Paper:* {PAPER['bench']}"]
    return "Speed", text, obj


def _dynamics_table(obj, fractions=(0.2, 0.4, 0.6, 0.8)) -> str:
    """Per epoch: the unpruned score and, at each share of heads masked, the score and
    its share of the unpruned one (dynamics.json; the full grid is in dynamics.csv)."""
    metric = obj.get("metric", "bleu")
    label = METRIC_LABELS.get(metric, metric)
    lines = obj.get("lines") or []
    present = sorted({p["fraction"] for l in lines for p in l["curve"] if 0 < p["fraction"] < 1})
    cols = [f for f in fractions if any(abs(x - f) < 1e-6 for x in present)] or present
    out = [f"| epoch | updates | {label}, all heads | "
           + " | ".join(f"{100 * f:.0f}% masked" for f in cols) + " |",
           "|---:|---:|---:|" + "---:|" * len(cols)]
    for l in lines:
        base = (l.get("unpruned") or {}).get(metric)
        cells = []
        for f in cols:
            p = next((p for p in l["curve"] if abs(p["fraction"] - f) < 1e-6), None)
            v = None if p is None else p.get(metric)
            cells.append("" if v is None else f"{v:.2f}" + (
                f" ({100 * v / base:.0f}%)" if base else ""))
        when = f"{l['epoch']}" if l.get("end_of_epoch", True) else f"{l['epoch']} (mid)"
        out.append(f"| {when} | {l['updates']:,} | " + ("" if base is None else f"{base:.2f}")
                   + " | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _section_dynamics(d):
    pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "*dynamics*.png")))
    obj = _read_json(os.path.join(d, "dynamics.json"))
    if not pngs and obj is None:
        return None
    text = [_img(d, p) for p in pngs]
    if obj is not None and obj.get("lines"):
        label = METRIC_LABELS.get(obj.get("metric", "bleu"), obj.get("metric"))
        text += [f"Heads masked by importance (estimated at each epoch's end): {label} and, in "
                 "brackets, its share of the unpruned model's; every point: `dynamics.csv`.",
                 _dynamics_table(obj)]
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


def build_report(results_dir: str, title: Optional[str] = None) -> str:
    parts = [f"# {title or f'fairseq-headprune report: `{os.path.abspath(results_dir)}`'}", ""]
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
