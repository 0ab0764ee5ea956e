"""Loss terms: the extra losses a method adds to training (a regularizer, a quantizer's own term)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LossTerm:
    """An extra loss: ``weight(progress) * fn(model)``, progress = step / total steps in [0, 1]."""

    name: str
    fn: Callable[[nn.Module], torch.Tensor]
    weight: Callable[[float], float] | float = 1.0

    def weight_at(self, progress: float) -> float:
        return float(self.weight(progress)) if callable(self.weight) else float(self.weight)
