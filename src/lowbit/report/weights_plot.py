"""Weight histograms in each layer's normalized domain u(w), with the quantizer's levels drawn
over them: what SinReQ (METHODS.md section 2) does to a layer is visible at a glance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_DRAWN_LEVELS = 32


@dataclass(frozen=True)
class LayerGrid:
    name: str
    bits: int
    u: np.ndarray  # the layer's weights in the quantizer's normalized domain
    levels: np.ndarray  # the quantizer's levels in that domain


def plot_weight_grids(layers: Sequence[LayerGrid], path: str | Path, title: str = "") -> Path:
    """One histogram per layer with vertical lines at the levels; writes a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = min(3, max(len(layers), 1))
    rows = max(math.ceil(len(layers) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, layers):
        u = layer.u[np.isfinite(layer.u)]
        lo, hi = float(layer.levels.min()), float(layer.levels.max())
        span = hi - lo if hi > lo else 1.0
        ax.hist(np.clip(u, lo - 0.25 * span, hi + 0.25 * span), bins=120, color="#4C72B0", alpha=0.85)
        dense = len(layer.levels) > MAX_DRAWN_LEVELS  # more lines than that are a red wash
        for level in ([] if dense else layer.levels):
            ax.axvline(float(level), color="#C44E52", linewidth=0.8, alpha=0.8)
        levels_note = f", {len(layer.levels)} levels not drawn" if dense else ""
        ax.set_title(f"{layer.name}  ({layer.bits}-bit{levels_note})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weight_grids(model: Any) -> list[LayerGrid]:
    """Each weight-quantized layer's u(w) and its quantizer's levels."""
    import torch

    from lowbit.nn import quantized_layers

    grids = []
    with torch.no_grad():
        for name, layer in quantized_layers(model).items():
            quantizer = layer.weight_quantizer
            if quantizer is None:
                continue
            u = quantizer.normalize(layer.weight).detach().float().cpu().numpy().ravel()
            grids.append(LayerGrid(name, quantizer.bits, u, type(quantizer).levels(quantizer.bits).numpy()))
    return grids


def write_weight_plot(model: Any, folder: Path, title: str) -> Path | None:
    """A run's ``plots/weights.png``: u(w) against the levels per quantized layer (None: no quantized layer)."""
    grids = weight_grids(model)
    return plot_weight_grids(grids, folder / "plots" / "weights.png", title) if grids else None
