"""Figures that compare runs, for the HTML report: accuracy vs average bits with the Pareto front,
and training curves. Each function takes plain numbers and returns PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")  # matplotlib's tab10, so table swatches match the plots
LINESTYLES = ("-", "--", ":", "-.")
BITS_TICKS = (1, 2, 3, 4, 6, 8, 16, 32)


@dataclass(frozen=True)
class RunPoint:
    """A run's final result: average weight bits and test accuracy (fraction)."""

    name: str
    avg_bits: float
    accuracy: float
    color: str


@dataclass(frozen=True)
class Segment:
    """Consecutive metrics lines of one run in one phase; ``x`` counts epochs over the whole run."""

    run: str
    phase: str
    color: str
    style: str
    x: tuple[int, ...]
    loss: tuple[float | None, ...]
    accuracy: tuple[float | None, ...]


def run_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the ``(avg_bits, accuracy)`` points no other point dominates (fewer or equal bits
    and higher or equal accuracy, one strictly), sorted by bits."""
    front = [i for i, (b, a) in enumerate(points)
             if not any(b2 <= b and a2 >= a and (b2 < b or a2 > a) for b2, a2 in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def _bits_axis(ax: Any, xs: Sequence[float]) -> None:
    """log2 x axis from just below the fewest bits to just above the most, ticks at whole bits."""
    from matplotlib.ticker import FixedLocator, NullLocator

    lo, hi = min(xs, default=1.0), max(xs, default=8.0)
    ax.set_xscale("log", base=2)
    ax.set_xlim(max(lo / 1.25, 0.5), hi * 1.25)
    ax.xaxis.set_major_locator(FixedLocator([t for t in BITS_TICKS if lo / 1.3 <= t <= hi * 1.3] or [lo]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(lambda value, _pos: f"{value:g}")


def accuracy_vs_bits(points: Sequence[RunPoint],
                     evaluated: Mapping[str, Sequence[tuple[float, float]]] | None = None,
                     colors: Mapping[str, str] | None = None) -> bytes:
    """Each run's test accuracy against its average weight bits, the runs' Pareto front as a step
    line, and (faint) the plans a search evaluated, as ``(avg_bits, val accuracy)`` per run."""
    evaluated, colors = evaluated or {}, colors or {}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    for name, plans in evaluated.items():
        if plans:
            ax.scatter([p[0] for p in plans], [100 * p[1] for p in plans], s=14, alpha=0.35, marker="x",
                       color=colors.get(name, "gray"), label=f"{name}: evaluated plans (val. accuracy)")
    front = [points[i] for i in pareto_front([(p.avg_bits, p.accuracy) for p in points])]
    if len(front) > 1:
        ax.step([p.avg_bits for p in front], [100 * p.accuracy for p in front], where="post", color="black",
                linewidth=1.2, alpha=0.6, label="Pareto front of the runs")
    on_front = {id(p) for p in front}
    for p in points:
        ax.scatter([p.avg_bits], [100 * p.accuracy], s=70, color=p.color, zorder=3,
                   edgecolor="black" if id(p) in on_front else "none", linewidth=1.2)
        ax.annotate(p.name, (p.avg_bits, 100 * p.accuracy), xytext=(6, 5), textcoords="offset points", fontsize=8)
    all_bits = [p.avg_bits for p in points] + [b for plans in evaluated.values() for b, _ in plans]
    _bits_axis(ax, all_bits)
    ax.set_xlabel("average weight bits (log scale; 32 = float)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("accuracy vs average bits (outlined: on the Pareto front)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def training_curves(segments: Sequence[Segment]) -> bytes:
    """Training loss (left, log scale) and test/validation accuracy (right) per epoch; one colour
    per run, one line style per phase (e.g. WaveQ's ``waveq`` then ``finetune``)."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    multi_phase = {s.run for s in segments if any(t.run == s.run and t.phase != s.phase for t in segments)}
    for s in segments:
        label = f"{s.run} ({s.phase})" if s.run in multi_phase else s.run
        for ax, ys, scale in ((loss_ax, s.loss, 1.0), (acc_ax, s.accuracy, 100.0)):
            pairs = [(x, y * scale) for x, y in zip(s.x, ys) if y is not None]
            if pairs:
                ax.plot([p[0] for p in pairs], [p[1] for p in pairs], color=s.color, linestyle=s.style,
                        marker="o", markersize=3 if len(pairs) > 1 else 6, linewidth=1.5, label=label)
    if any(line.get_ydata().size and min(line.get_ydata()) > 0 for line in loss_ax.get_lines()):
        loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (task loss when logged)")
    acc_ax.set_ylabel("test / validation accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch (counted over the whole run)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = [], []
    for ax in (loss_ax, acc_ax):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    rows = (len(labels) + 3) // 4
    fig.tight_layout(rect=(0, min(0.08 * rows, 0.4), 1, 1))
    return _png(fig)
