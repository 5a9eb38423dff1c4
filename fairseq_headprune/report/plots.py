"""PNG plots with matplotlib (Agg backend), written atomically."""

import io
from typing import Dict, List, Optional, Sequence

from ..results import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    atomic_write(path, buf.getvalue())
    return path


def heatmap(matrix: Sequence[Sequence[Optional[float]]], path: str, title: str,
            cbar_label: str = "", marks: Optional[Sequence[Sequence[bool]]] = None,
            cmap: str = "viridis", center_zero: bool = False, fmt: str = "{:.2f}") -> str:
    """Layers (rows, layer 1 on top) x heads (columns); None cells are grey; optional
    '*' marks (e.g. significant heads)."""
    import numpy as np

    plt = _plt()
    rows = len(matrix)
    cols = max((len(r) for r in matrix), default=0)
    data = np.full((rows, cols), np.nan)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is not None:
                data[i, j] = v
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * cols + 2), max(2.5, 0.45 * rows + 1.5)))
    kw = {}
    if center_zero and np.isfinite(data).any():
        m = np.nanmax(np.abs(data)) or 1.0
        kw = {"vmin": -m, "vmax": m}
    cm = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, aspect="auto", **kw)
    ax.set_xticks(range(cols), [str(j + 1) for j in range(cols)])
    ax.set_yticks(range(rows), [str(i + 1) for i in range(rows)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(data[i, j]):
                    txt = fmt.format(data[i, j])
                    if marks is not None and marks[i][j]:
                        txt += "*"
                    r, g, b, _ = cm(im.norm(data[i, j]))  # dark text on light cells
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                            color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    fig.colorbar(im, ax=ax, label=cbar_label)
    return _save(fig, path)


def lines(series: Dict[str, Sequence[tuple]], path: str, title: str, xlabel: str,
          ylabel: str, logx: bool = False, hline: Optional[float] = None,
          hline_label: Optional[str] = None, labels: Optional[Dict[str, str]] = None,
          bands: Optional[Dict[str, Sequence[tuple]]] = None) -> str:
    """One line per series name; each series is a list of (x, y). ``hline``: a dashed
    reference line (e.g. the unpruned baseline), named in the legend by ``hline_label``;
    ``labels``: legend text per series name (default: the name); ``bands``: per series
    name, (x, low, high) shaded around its line in its colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        pts = [(x, y) for x, y in points if y is not None]
        if pts:
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                            label=(labels or {}).get(name, name))
            band = (bands or {}).get(name)
            if band:
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                color=line.get_color(), alpha=0.2, linewidth=0)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=0.8, label=hline_label)
    if logx:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        xs = sorted({p[0] for pts in series.values() for p in pts if p[0] > 0})
        if 0 < len(xs) <= 12:  # label the values drawn, as plain numbers
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        else:
            ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1 or hline_label:
        ax.legend(fontsize=8)
    return _save(fig, path)


def scatter(x: Sequence[float], y: Sequence[float], path: str, title: str, xlabel: str,
            ylabel: str, labels: Optional[List[str]] = None) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x, y, s=14)
    if labels and len(labels) <= 60:
        for xi, yi, lab in zip(x, y, labels):
            ax.annotate(lab, (xi, yi), fontsize=6, alpha=0.7)
    lo = min(list(x) + list(y) + [0])
    hi = max(list(x) + list(y) + [0])
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.6, linestyle="--", label="y = x")
    ax.axhline(0, color="black", linewidth=0.5)  # 0: no change from the full model
    ax.axvline(0, color="black", linewidth=0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)
