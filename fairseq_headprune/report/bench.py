"""The bench command's plot and text table, drawn from bench.json alone (written by
``fairseq-headprune bench``; its rows are described in analysis/bench.py)."""

import glob
import os
from typing import List

from ..errors import HeadPruneError
from ..results import read_json


# Files written before the cost model hold "bound": the ratio of multiply-adds of
# projections, attention matmuls, FFN and vocabulary only (not a bound: measured
# speed-ups exceeded it). They are still drawn, labelled as what they are.
OLD_ESTIMATE_LABEL = "multiply-add ratio (old file)"


def estimate_of(r):
    """(estimate, legend label) of a row, new file or old."""
    if "estimate" in r:
        return r["estimate"], "cost-model estimate"
    return r["bound"], OLD_ESTIMATE_LABEL


def _part(r) -> str:
    return "encoder" if r["part"] == "encoder" else f"decoding, beam {r['beam']}"


def _part_rank(part: str):
    return (0, 0) if part == "encoder" else (1, int(part.rsplit(" ", 1)[1]))


NAMES = {"removed": "heads removed", "masked": "heads masked"}


def panel_series(rows) -> dict:
    """{part: {label: [(batch size, speed-up)]}}, parts in order (encoder, then beams),
    the removed variant's cost-model estimate as a series of its own."""
    out = {part: {} for part in sorted(dict.fromkeys(_part(r) for r in rows), key=_part_rank)}
    for r in rows:
        if r["variant"] == "full":
            continue
        series = out[_part(r)]
        series.setdefault(NAMES.get(r["variant"], r["variant"]), []).append(
            (r["batch_size"], r["speedup"]["median"]))
        if r["variant"] == "removed":
            value, name = estimate_of(r)
            series.setdefault(name, []).append((r["batch_size"], value))
    for series in out.values():
        for pts in series.values():
            pts.sort()
    return out


def plot(rows, path, heads: str = ""):
    """One panel per part (encoder, decoding at each beam): median speed-up over the
    full model against batch size, per variant, with the cost-model estimate of the
    removed variant dashed and the full model's 1x marked."""
    from .plots import _plt, _save

    panels = panel_series(rows)
    plt = _plt()
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.6),
                             sharey=True, squeeze=False)
    xs = sorted({r["batch_size"] for r in rows})
    for ax, (part, series) in zip(axes[0], panels.items()):
        for name, pts in series.items():
            estimate = name not in NAMES.values()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if estimate else "-",
                    marker="o", markersize=3, label=name, **({"color": "grey"} if estimate else {}))
        ax.axhline(1.0, color="black", linewidth=0.6, label="full model (1x)")
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_title(part)
        ax.set_xlabel("batch size (sentences)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("speed-up over the full model (x)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Speed-up of the pruned model" + (f" ({heads})" if heads else ""))
    return _save(fig, path)


def short_table(obj) -> str:
    """Markdown: one row per part and batch size, the removed variant's speed-up,
    the cost-model estimate, and tokens/s full -> removed (masked where timed)."""
    by = {}
    for r in obj["rows"]:
        by.setdefault((_part(r), r["batch_size"]), {})[r["variant"]] = r
    masked = any("masked" in v for v in by.values())
    lines = ["| part | batch | speed-up (heads removed) | cost-model estimate | tokens/s, full -> removed |"
             + (" speed-up (heads masked) |" if masked else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if masked else "")]
    for (part, bs), v in sorted(by.items(), key=lambda kv: (_part_rank(kv[0][0]), kv[0][1])):
        if "removed" not in v:
            continue
        rm, full = v["removed"], v["full"]
        cells = [part, str(bs), f"{rm['speedup']['median']:.2f}x", f"{estimate_of(rm)[0]:.2f}x",
                 f"{full['tokens_per_s']:,.0f} -> {rm['tokens_per_s']:,.0f}"]
        if masked:
            cells.append(f"{v['masked']['speedup']['median']:.2f}x" if "masked" in v else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heads_label(obj) -> str:
    h = obj.get("heads") or {}
    return f"{h['count']} of {h['present_before']} heads removed" if "count" in h else ""


def _is_bench(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("rows"), list) and "variants" in obj


def check_bench(obj, path: str) -> None:
    """What ``plot`` reads of every row, so that a malformed file is one clear error."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not _is_bench(obj):
        raise HeadPruneError(f"bench results file {path!r} is not one (expected variants "
                             f"and a list of rows)")
    for r in obj["rows"]:
        if not (isinstance(r, dict) and r.get("part") in ("encoder", "decode")
                and isinstance(r.get("variant"), str) and number(r.get("batch_size"))
                and isinstance(r.get("speedup"), dict) and number(r["speedup"].get("median"))
                and number(r.get("estimate", r.get("bound")))):
            raise HeadPruneError(f"bench results file {path!r} has a row without part, "
                                 f"variant, batch_size, speedup.median and estimate")


def redraw(results_dir: str) -> List[str]:
    """Draw every bench PNG of ``results_dir`` from its bench JSON files: bench.json ->
    bench.png, and so for any other bench*.json that holds bench rows (the timing
    scripts' bench_ablation.json does not, and is left alone). Returns the paths
    written (none where the folder holds no bench results)."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "bench*.json"))):
        obj = read_json(path, "bench results file")
        if os.path.basename(path) != "bench.json" and not _is_bench(obj):
            continue
        check_bench(obj, path)
        out.append(plot(obj["rows"], path[:-len(".json")] + ".png", heads_label(obj)))
    return out


def format_table(rows):
    head = (f"{'part':8s} {'beam':>4s} {'batch':>5s} {'variant':8s} {'median s':>9s} "
            f"{'[min, max]':>19s} {'sent/s':>8s} {'tok/s':>9s} {'speed-up':>8s} "
            f"{'vs mask':>7s} {'estimate':>8s} {'meas/est':>8s} {'peak mem':>9s}")
    lines = [head]
    for r in rows:
        s = r["seconds"]
        mem = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}MiB"
        lines.append(
            f"{r['part']:8s} {r['beam'] or '-':>4} {r['batch_size']:>5d} {r['variant']:8s} "
            f"{s['median']:9.4f} [{s['min']:8.4f},{s['max']:8.4f}] "
            f"{r['sentences_per_s']:8.1f} {r['tokens_per_s']:9.1f} "
            f"{r['speedup']['median']:7.3f}x "
            + (f"{r['speedup_vs_masked']['median']:6.3f}x " if "speedup_vs_masked" in r
               else f"{'':7s} ")
            + f"{r['estimate']:7.3f}x {r['measured_over_estimate']:8.3f} "
            f"{mem:>9s}")
    return "\n".join(lines)


def summary_text(obj) -> str:
    """What bench prints: the heads, the table, the goals' headline numbers."""
    h = obj["heads"]
    lines = [f"heads removed/masked: {h['count']} of {h['present_before']} ({h['spec']})",
             format_table(obj["rows"])]
    g = obj["goals"]
    if "masked_worst_slowdown_vs_full" in g:
        m = g["masked_worst_slowdown_vs_full"]
        lines.append(f"masked vs full, worst case: {100 * m['slowdown']:+.1f}% slower "
                     f"({m['part']}, beam {m['beam']}, batch {m['batch_size']})")
    if "encoder_largest_batch" in g:
        e = g["encoder_largest_batch"]
        lines.append(f"encoder, batch {e['batch_size']}: speed-up {e['speedup']:.3f}x, "
                     f"cost-model estimate {e['estimate']:.3f}x, measured/estimate "
                     f"{e['measured_over_estimate']:.3f}")
    if "removed_measured_over_estimate" in g:
        lo, hi = (g["removed_measured_over_estimate"][k] for k in ("lowest", "highest"))

        def at(x):
            return ("encoder" if x["part"] == "encoder" else f"beam {x['beam']}") + \
                f", batch {x['batch_size']}"
        lines.append(f"removed, measured/estimate: {lo['measured_over_estimate']:.3f} "
                     f"({at(lo)}) to {hi['measured_over_estimate']:.3f} ({at(hi)})")
    tp = obj.get("cost_model", {}).get("throughput")
    if tp:
        lines.append(f"cost model rates ({tp['source']}): GEMM {tp['gemm_macs_per_s'] / 1e9:.2f} "
                     f"GMAC/s, attention matmuls {tp['attn_macs_per_s'] / 1e9:.2f} GMAC/s, "
                     f"memory {tp['bytes_per_s'] / 1e9:.2f} GB/s")
    return "\n".join(lines)
