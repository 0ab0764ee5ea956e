"""Plots a run writes into its folder (``plots/``), drawn by ``lowbit.report``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowbit.nn import quantized_layers
from lowbit.report.weights_plot import LayerGrid, plot_weight_grids


@torch.no_grad()
def weight_grids(model: nn.Module) -> list[LayerGrid]:
    """Each weight-quantized layer's u(w) and its quantizer's levels."""
    grids = []
    for name, layer in quantized_layers(model).items():
        quantizer = layer.weight_quantizer
        if quantizer is None:
            continue
        u = quantizer.normalize(layer.weight).detach().float().cpu().numpy().ravel()
        grids.append(LayerGrid(name, quantizer.bits, u, type(quantizer).levels(quantizer.bits).numpy()))
    return grids


def write_weight_plot(model: nn.Module, folder: Path, title: str) -> Path | None:
    grids = weight_grids(model)
    return plot_weight_grids(grids, folder / "plots" / "weights.png", title) if grids else None
