"""Small models and spaces shared by the tests of lowbit.search."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.search import SearchSpace


def small_model(seed: int = 0) -> nn.Sequential:
    """Conv(1->4, 3x3) -> Conv(4->8, 3x3) -> Linear(128->16) -> Linear(16->10), for 8x8 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10))


def small_space(**kwargs) -> SearchSpace:
    """Searched layers '2' and '5' (first '0' and last '7' pinned) unless kwargs say otherwise."""
    return SearchSpace.from_model(small_model(), **kwargs)
