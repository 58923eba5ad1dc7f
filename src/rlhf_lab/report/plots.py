"""Figures as PNG files (matplotlib, Agg backend: no display needed, safe in tests and on servers).

Generic helpers (``new_figure``, ``save_figure``) for every recipe, and the figures of the studies:
``plot_bon_curves`` draws the best-of-n figure of Coste et al. 2023 (proxy and gold reward against n and against
KL_bon = log n − (n − 1)/n, one line per objective or ensemble member).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: never open a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from rlhf_lab.io import atomic_file


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] | None = None):
    """A figure and its axes grid (always a 2-D array of axes), sized ~4.5 × 3.5 inches per panel."""
    size = size or (4.5 * cols, 3.5 * rows)
    return plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` atomically (temp file in the same directory, then one rename) and close it."""
    path = Path(path)
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_bon_curves(curves: Mapping[str, Sequence[Mapping]], out_png_prefix: str | Path,
                    title: str | None = None) -> Path:
    """The best-of-n figure: ``{out_png_prefix}.png`` with 2 × 2 panels, one line per curve.

    ``curves`` maps a label (``ensemble_mean``, ``member_rm1``, …) to its rows ``{"n", "proxy_score",
    "gold_score", "kl_bon"}`` (``bon_sampled_results.json``). Panels: proxy vs n, gold vs n (log₂ n axis),
    proxy vs KL_bon, gold vs KL_bon. Rows without a gold score are left out of the gold panels; rows with a
    ``gold_se`` get a ±1 SE band around the gold line.
    """
    fig, axes = new_figure(2, 2, size=(11, 8))
    panels = [
        (axes[0, 0], "n", "proxy_score", "proxy reward vs n"),
        (axes[0, 1], "n", "gold_score", "gold reward vs n"),
        (axes[1, 0], "kl_bon", "proxy_score", "proxy reward vs KL"),
        (axes[1, 1], "kl_bon", "gold_score", "gold reward vs KL"),
    ]
    handles: dict[str, object] = {}
    for ax, x_key, y_key, panel_title in panels:
        drawn = False
        for index, (label, rows) in enumerate(curves.items()):
            points = [(r[x_key], r[y_key]) for r in rows if r.get(y_key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, color=f"C{index % 10}")
                handles.setdefault(label, line)
                band = [(r[x_key], r[y_key], r.get("gold_se")) for r in rows if r.get(y_key) is not None]
                if y_key == "gold_score" and all(se is not None for _, _, se in band):
                    ax.fill_between([x for x, _, _ in band], [y - se for _, y, se in band],
                                    [y + se for _, y, se in band], color=f"C{index % 10}", alpha=0.12, linewidth=0)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no {y_key.replace('_', ' ')}s", ha="center", va="center", transform=ax.transAxes)
        if x_key == "n":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("n (best of n)")
        else:
            ax.set_xlabel("KL_bon = log n − (n−1)/n  (nats)")
        ax.set_ylabel(y_key.replace("_", " "))
        ax.set_title(panel_title)
        ax.grid(True, alpha=0.3)
    if handles:  # one legend for all panels: a curve has the same colour everywhere
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=min(len(handles), 4), fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, f"{out_png_prefix}.png")


def plot_paired_differences(series: Mapping[str, Sequence[Mapping]], out_png: str | Path, *, x_key: str = "kl_bon",
                            x_label: str = "KL_bon = log n − (n−1)/n  (nats)", y_label: str = "paired difference",
                            title: str | None = None) -> Path:
    """One line per comparison: the paired difference against ``x_key`` with its confidence interval as a band.

    ``series`` maps a label (``ensemble_mean − members``) to rows ``{x_key, "diff", "ci_low", "ci_high"}``; a
    row without an interval is drawn without a band. The zero line is what "not shown" means: a band across it.
    """
    fig, axes = new_figure(1, 1, size=(6.5, 4.2))
    ax = axes[0, 0]
    ax.axhline(0.0, color="black", linewidth=0.8)
    for index, (label, rows) in enumerate(series.items()):
        xs = [r[x_key] for r in rows]
        ax.plot(xs, [r["diff"] for r in rows], marker="o", markersize=3, linewidth=1.5, color=f"C{index % 10}",
                label=label)
        banded = [r for r in rows if r.get("ci_low") is not None and r.get("ci_high") is not None]
        if banded:
            ax.fill_between([r[x_key] for r in banded], [r["ci_low"] for r in banded],
                            [r["ci_high"] for r in banded], color=f"C{index % 10}", alpha=0.15, linewidth=0)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, out_png)


def plot_gold_vs_kl(runs: Mapping[str, Sequence[tuple[float, float, float]]], out_png: str | Path, *,
                    target_kl: float | None = None, title: str | None = None) -> Path:
    """Online-RL runs: mean eval gold (solid) and proxy (dashed) against mean eval KL, one colour per run group.

    ``runs`` maps a label (``single · seed 0``) to points ``(kl, gold, proxy)`` in step order; labels that share
    their first word share a colour. ``target_kl`` draws the KL at which the runs are compared.
    """
    fig, axes = new_figure(1, 1, size=(6.5, 4.2))
    ax = axes[0, 0]
    groups = list(dict.fromkeys(label.split()[0] for label in runs))
    for label, points in runs.items():
        color = f"C{groups.index(label.split()[0]) % 10}"
        kl = [p[0] for p in points]
        ax.plot(kl, [p[1] for p in points], marker="o", markersize=3, linewidth=1.5, color=color, label=label)
        ax.plot(kl, [p[2] for p in points], linestyle="--", linewidth=1.0, color=color, alpha=0.6)
    if target_kl is not None:
        ax.axvline(target_kl, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("KL(π‖π_ref), mean over eval answers (nats)")
    ax.set_ylabel("reward (solid: gold, dashed: proxy)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, out_png)
