"""The paper's findings against ours, point by point, read from a results folder's files
(``findings.md``): each row says what the paper found (its figure, its data), what this
folder's results show, and the file the number comes from. Rows whose results file is
missing are left out; nothing here loads a model.

``python -m fairseq_headprune.report.findings RESULTS_DIR [--random DIR]``"""

import argparse
import os
from typing import List, Optional

from ..analysis.scoring import METRIC_LABELS as UNITS
from ..heads import KIND_NAMES
from ..results import read_json, write_text

NAMES = {"E": "Enc-Enc", "A": "Enc-Dec", "D": "Dec-Dec"}  # the paper's names
# the paper's findings on its translation model (WMT) and on BERT (MNLI), by row
PAPER = {
    "bleu": {"ablation": "8/96 Enc-Enc heads at p < 0.01, half of them improving BLEU (Table 1, WMT)",
             "one_head": "most layers not significant; Enc-Dec layer 6 -13.56, Enc-Dec layer 5 "
                         "-1.55, Enc-Enc layer 1 -1.31 BLEU (Table 2, WMT)",
             "curve": "~20% (Fig. 3, WMT); ~40% for BERT; sharp drop past ~60%"},
    "accuracy": {"ablation": "most of BERT's 144 heads can be masked alone with no significant "
                             "change in accuracy; some masked heads improve it (§3.2, MNLI)",
                 "one_head": "most layers keep their accuracy with a single head (Table 3, "
                             "BERT on MNLI)",
                 "curve": "~40% for BERT on MNLI (Fig. 3); ~20% for the WMT model"},
}


def _metric(d: str) -> str:
    """The folder's main metric: 'bleu', or 'accuracy' for a classifier's results."""
    for name in ("curve.json", "ablation.json", "one_head.json"):
        o = _load(os.path.join(d, name))
        m = ((o or {}).get("settings") or {}).get("metric")
        if m in ("bleu", "accuracy"):
            return m
        if m in ("f1", "mcc"):
            return "accuracy"
    return "bleu"


def _load(path: str) -> Optional[dict]:
    return read_json(path, "results file") if os.path.isfile(path) else None


def _ablation(d: str) -> Optional[tuple]:
    a = _load(os.path.join(d, "ablation.json"))
    if not a:
        return None
    heads = a["heads"]
    alpha = a.get("alpha", 0.01)
    per = []
    for kind in "EAD":
        hk = [h for h in heads if h["kind"] == kind]
        if hk:
            sig = [h for h in hk if h["significant"]]
            better = sum(1 for h in sig if h["better"])
            per.append(f"{NAMES[kind]} {len(sig)}/{len(hk)} ({better} better)")
    n_sig = sum(1 for h in heads if h["significant"])
    ours = (f"{n_sig}/{len(heads)} heads (p < {alpha:g}): " + ", ".join(per))
    m = _metric(d)
    return (f"Heads whose masking alone changes {UNITS[m]} significantly",
            PAPER[m]["ablation"], ours, "ablation.json (Table 1)")


def _one_head(d: str) -> Optional[tuple]:
    o = _load(os.path.join(d, "one_head.json"))
    if not o:
        return None
    rows = o["rows"]
    sig = sorted((r for r in rows if r["significant"]), key=lambda r: r["delta"])
    worst = min(rows, key=lambda r: r["delta"])
    shown = ", ".join(f"{NAMES[r['kind']]} layer {r['layer']} {r['delta']:+.2f}" for r in sig[:3])
    ours = (f"{len(rows) - len(sig)}/{len(rows)} layers not significant; "
            + (f"significant: {shown}" if sig else "none significant")
            + f"; largest drop {NAMES[worst['kind']]} layer {worst['layer']} {worst['delta']:+.2f}")
    return ("Keeping only the best head of one layer", PAPER[_metric(d)]["one_head"], ours,
            "one_head.json (Table 2)")


def _curve_points(c: dict, name: str) -> List[tuple]:
    """(share masked, the curve's metric) of curve ``name``; a classifier's single-kind
    curve ("E") stands for "all"."""
    m = (c.get("settings") or {}).get("metric", "bleu")
    pts = c["curves"].get(name)
    if pts is None and name == "all" and list(c["curves"]) in (["E"], ["A"], ["D"]):
        pts = next(iter(c["curves"].values()))
    return [(p.get("share_masked", p["fraction"]), p[m]) for p in pts or []]


def _prunable(points: List[tuple], loss: float = 1.0) -> Optional[float]:
    """The largest share masked, walking up from 0%, before BLEU first falls by >= loss."""
    if not points:
        return None
    base, best = points[0][1], 0.0
    for share, bleu in sorted(points):
        if base - bleu >= loss:
            break
        best = share
    return best


def _curves(d: str) -> List[tuple]:
    c = _load(os.path.join(d, "curve.json"))
    if not c:
        return []
    out = []
    m = (c.get("settings") or {}).get("metric", "bleu")
    unit = UNITS.get(m, m)
    full = _curve_points(c, "all")
    if full:
        share = _prunable(full)
        at = {round(100 * s): b for s, b in full}
        heads = max(p["target"] for pts in c["curves"].values() for p in pts)
        out.append((f"Heads that can be masked by importance at < 1 {unit} point loss"
                    if m != "bleu" else "Heads that can be masked by importance at < 1 BLEU loss",
                    PAPER.get(m, PAPER["bleu"])["curve"],
                    f"{100 * share:.0f}% of the {heads} heads ({unit} {full[0][1]:.2f} unpruned"
                    + (f", {at[60]:.2f} at 60%" if 60 in at else "") + ")",
                    "curve.json (Fig. 3)"))
    kinds = [k for k in "EAD" if k in c["curves"] and _curve_points(c, k)]
    if len(kinds) > 1:
        def at50(k):
            pts = dict((round(100 * s), b) for s, b in _curve_points(c, k))
            return pts.get(50)
        losses = {k: _curve_points(c, k)[0][1] - at50(k) for k in kinds if at50(k) is not None}
        if losses:
            worst = max(losses, key=losses.get)
            ours = "; ".join(f"{NAMES[k]} {-v:+.2f}" for k, v in losses.items())
            out.append(("The most sensitive attention kind (half of its heads masked)",
                        "Enc-Dec: below ~60% of its heads BLEU collapses; Enc-Enc and Dec-Dec "
                        "keep ~30 BLEU with 20% of their heads (Fig. 5, WMT)",
                        f"{NAMES[worst]} ({KIND_NAMES[worst]}); BLEU change at 50%: {ours}",
                        "curve.json, --per-kind (Fig. 5)"))
    return out


def _random(d: Optional[str], main: str) -> Optional[tuple]:
    if not d:
        return None
    r, c = _load(os.path.join(d, "curve.json")), _load(os.path.join(main, "curve.json"))
    if not r or not c or not _curve_points(c, "all"):
        return None
    imp = dict((round(100 * s), b) for s, b in _curve_points(c, "all"))
    main_curve = "E" if list(c["curves"]) == ["E"] else "all"  # a classifier: E alone
    seeds = [n for n in r["curves"] if n.split("@")[0] == main_curve]
    rnd = [dict((round(100 * s), b) for s, b in _curve_points(r, n)) for n in seeds]
    pct = 50 if 50 in imp and all(50 in x for x in rnd) else None
    if pct is None or not rnd:
        return None
    vals = [x[pct] for x in rnd]
    unit = UNITS.get((c.get("settings") or {}).get("metric", "bleu"), "BLEU")
    return ("Importance order against random order (all kinds, 50% masked)",
            "ranking by importance beats random and ablation order (Fig. 4)",
            f"importance {imp[pct]:.2f} {unit}; random {min(vals):.2f}-{max(vals):.2f} "
            f"({len(vals)} seeds)", "curve.json vs random/curve.json (Fig. 4)")


def _cross(d: str) -> Optional[tuple]:
    files = sorted(f for f in os.listdir(d) if f.startswith("cross_domain") and f.endswith(".json"))
    if not files:
        return None
    x = _load(os.path.join(d, files[0]))
    unit = UNITS.get(x.get("metric", "bleu"), "BLEU")
    return (f"Same heads matter in another domain (per-head {unit} changes correlated)",
            "Pearson r = 0.56, newstest2013 vs MTNT (WMT); 0.68 MNLI matched vs mismatched",
            (f"Pearson r = {x['pearson']:.2f}" if x.get("pearson") is not None else
             "Pearson r undefined (the changes on one set are all equal)")
            + f" ({x['a']} vs {x['b']}, {x['n']} heads)", files[0])


def _dynamics(d: str) -> Optional[tuple]:
    dyn = _load(os.path.join(d, "dynamics.json"))
    if not dyn:
        return None
    metric = dyn.get("metric", "bleu")
    shares = []  # (epoch, share of the unpruned score kept with 40% of heads masked)
    for line in dyn["lines"]:
        p = next((p for p in line["curve"] if abs(p["fraction"] - 0.4) < 1e-6), None)
        base = (line.get("unpruned") or {}).get(metric)
        if p is not None and base:
            shares.append((line["epoch"], p[metric] / base))
    n = len(dyn["lines"])
    # the first epoch from which on every epoch keeps >= 85% (a noisy early epoch that
    # does, followed by ones that do not, is not "from then on")
    stable = next((e for i, (e, _) in enumerate(shares)
                   if all(s >= 0.85 for _, s in shares[i:])), None)
    shown = shares if len(shares) <= 12 else shares[-12:]
    per_epoch = ", ".join(f"{e}: {100 * s:.0f}%" for e, s in shown)
    return ("When 40% of heads can go (keeping >= 85% of BLEU) during training",
            "from ~epoch 10 on; epochs 1-2: BLEU falls linearly with the share pruned "
            "(Fig. 6, IWSLT de-en)",
            (f"from epoch {stable} on" if stable is not None else
             f"not from any epoch to the end ({n} epochs)")
            + (f"; share kept with 40% masked, by epoch: {per_epoch}" if shares else ""),
            "dynamics.json (Fig. 6)")


def _speed(d: str) -> Optional[tuple]:
    b = _load(os.path.join(d, "bench.json"))
    if not b:
        return None
    rows = [r for r in b["rows"] if r["variant"] == "removed"]
    enc = [r for r in rows if r["part"] == "encoder"]
    dec = [r for r in rows if r["part"] == "decode"]
    bits = []
    if enc:
        top = max(enc, key=lambda r: r["batch_size"])
        bits.append(f"encoder batch {top['batch_size']}: {top['speedup']['median']:.2f}x")
    for r in sorted(dec, key=lambda r: (r["beam"], r["batch_size"])):
        if r["batch_size"] == max(x["batch_size"] for x in dec):
            bits.append(f"beam {r['beam']} batch {r['batch_size']}: {r['speedup']['median']:.2f}x")
    h = b["heads"]
    return ("Speed with half of the heads removed",
            "BERT, 50% removed: 1.175x examples/s at batch 16 and 64, 1.02x at batch 1 (GPU)",
            f"{h['count']} of {h['present_before']} removed, {b['settings'].get('device')}: "
            + "; ".join(bits), "bench.json (Table 4)")


def _budgets(d: str) -> Optional[tuple]:
    """Half of the heads removed without retraining: plain removal by importance against
    the best (non-random) order and repair; the largest heads budget within 1 point."""
    b = _load(os.path.join(d, "budgets.json"))
    if not b:
        return None
    m = (b["settings"].get("metrics") or ["bleu"])[0]
    unit, base = UNITS.get(m, m), b["baseline"][m]
    rows = [r for r in b["rows"] if r["order"] != "random" and r["budget"].startswith("heads:")]
    half = [r for r in rows if r["budget"] == "heads:50%"]
    plain = next((r for r in half if r["order"] == "importance" and r["repair"] == "none"), None)
    if not half or plain is None:
        return None
    best = max(half, key=lambda r: r[m])
    lost = base - plain[m]
    recovered = (f"; recovers {100 * (best[m] - plain[m]) / lost:.0f}% of the loss"
                 if lost > 0 else "")
    within = [r for r in rows if base - r[m] < 1.0]
    top = max(within, key=lambda r: (r["removed"], r[m])) if within else None
    ours = (f"{unit} {base:.2f} unpruned; half removed by importance, no repair: {plain[m]:.2f}; "
            f"best: {best['order']} order + {best['repair']} repair {best[m]:.2f}{recovered}; "
            + (f"most heads removed at < 1 point loss: {top['removed']} of "
               f"{b['baseline']['heads']} ({top['budget']}, {top['order']} + {top['repair']})"
               if top else "no budget stays within 1 point"))
    cal = b["settings"].get("calibration") or {}
    return (f"Heads removed without retraining, repaired on {cal.get('sentences', 0):,} "
            f"{cal.get('subset', 'train')} sentences",
            "not studied: the paper prunes without repair (retraining-free repair: Kwon et al. "
            "2022, FLAP 2024, encoders only)", ours, "budgets.json")


def findings(results_dir: str, random_dir: Optional[str] = None) -> str:
    rows = [r for r in [_ablation(results_dir), _one_head(results_dir), *_curves(results_dir),
                        _random(random_dir, results_dir), _cross(results_dir),
                        _dynamics(results_dir), _speed(results_dir), _budgets(results_dir)] if r]
    lines = ["| finding | paper (its data) | ours | from |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | `{d}` |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_headprune.report.findings",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir")
    p.add_argument("--random", default=None, metavar="DIR",
                   help="a curve run with --order random (several seeds) to compare with")
    p.add_argument("--out", default=None, help="default RESULTS_DIR/findings.md")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.results_dir, "findings.md")
    write_text(out, findings(args.results_dir, args.random))
    print(out)


if __name__ == "__main__":
    main()
