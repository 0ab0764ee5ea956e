"""Small models and spaces shared by the tests of lowbit.search."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowbit.data import ArrayLoader, hold_out
from lowbit.data.synthetic import load_synthetic
from lowbit.search import SearchSpace
from lowbit.search.sensitivity import LayerSensitivity, Sensitivity


def small_model(seed: int = 0) -> nn.Sequential:
    """Conv(1->4, 3x3) -> Conv(4->8, 3x3) -> Linear(128->16) -> Linear(16->10), for 8x8 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10))


def small_space(**kwargs) -> SearchSpace:
    """Searched layers '2' and '5' (first '0' and last '7' pinned) unless kwargs say otherwise."""
    return SearchSpace.from_model(small_model(), **kwargs)


def tiny_loaders() -> tuple[ArrayLoader, ArrayLoader]:
    """(train, validation) loaders of a small seeded synthetic 8x8 image set, for fine-tune evaluators."""
    splits = load_synthetic(None, seed=0, num_classes=10, input_size=8, n_train=160, n_test=32, noise=0.1)
    train, val = hold_out(splits.train, 0.25, seed=0)
    train_loader = ArrayLoader(train, batch_size=16, shuffle=True, mean=splits.mean, std=splits.std, seed=0,
                               indices=torch.arange(10, 74))
    val_loader = ArrayLoader(val, batch_size=64, shuffle=False, mean=splits.mean, std=splits.std)
    return train_loader, val_loader


def synthetic_sensitivity(space: SearchSpace, seed: int = 0) -> Sensitivity:
    """A sensitivity for every searched layer of ``space``: random traces, perturbations 4^-bits."""
    rng = np.random.default_rng(seed)
    layers = {}
    for layer in space.searched_layers:
        acts = list(space.act_choices or ())
        layers[layer.name] = LayerSensitivity(
            layer.name, layer.params, float(rng.uniform(1, 10)), 0.1,
            {b: float(layer.params * 4.0 ** -b) for b in space.bit_choices},
            {b: float(layer.params * 4.0 ** -b) for b in space.bit_choices},
            act_trace=float(rng.uniform(1, 10)) if acts else None, act_trace_se=0.1 if acts else None,
            act_elements=100 if acts else None,
            act_perturbation={a: float(100 * 4.0 ** -a) for a in acts} if acts else None)
    return Sensitivity(layers)


class Killed(Exception):
    """Raised by :class:`DiesAtCall`: the search was killed mid-evaluation."""


class DiesAtCall:
    """An evaluator killed (an exception out of the search) at its n-th call."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0

    def __call__(self, choices):
        self.calls += 1
        if self.calls == self.n:
            raise Killed()
        return self.inner(choices)

    def float_accuracy(self) -> float:
        return self.inner.float_accuracy()

    def describe(self) -> dict:
        return self.inner.describe()


def comparable_outcome(outcome) -> dict:
    """A search outcome as a dict without its wall times (equal across runs that did the same work)."""
    data = outcome.to_dict()
    data.pop("wall_s")
    for record in [*data["records"], data["best"]]:
        record.pop("wall_s")
    return data
