"""Charts of the benchmarks, drawn with matplotlib (the ``bench`` extra): line charts of named series with
the legend beside the plot, so it never covers a line."""

from __future__ import annotations

from pathlib import Path


def line_chart(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, path: str | Path,
               size: tuple[float, float] = (7.0, 4.0), dpi: int = 100, logy: bool = False):
    """Plot ``{name: [(x, y), ...]}`` (each series sorted by x, with markers) to ``path`` (PNG), the y axis
    logarithmic with ``logy``; returns the figure (closed). The legend sits right of the axes; the figure
    widens to hold it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(series.values()):
        raise ValueError("no points to plot")
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    for name, pts in series.items():
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=2, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return fig
