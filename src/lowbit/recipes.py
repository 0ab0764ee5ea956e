"""Default training recipes: the one place the CLI, the configs and the Python API read them from.

A recipe is an optimizer, a learning rate and a linear warm-up. Which one applies depends on the
quantizer, on whether training starts from trained float weights (``--init``) and on whether the
network has batch norm (networks without it need gentler steps at low bits); methods that
train in phases (WaveQ, DCQ, the search) have a recipe per phase. The ``lowbit train`` recipes
were chosen on validation splits carved from the training data, never on test
(``benchmarks/recipe_tuning.py`` repeats the choice and writes
``benchmarks/results/recipe_tuning.json``); the README's "Default recipes" table is generated from
:func:`recipe_table`. The phase recipes are the values those commands had before they moved here,
not re-tuned: WaveQ's fine-tune LR and the search's final fine-tune LR were picked from test
figures in earlier benchmarks, to be redone under the tuning protocol (BENCHMARKS.md).

What the user sets explicitly always wins: :meth:`Recipe.resolve` fills only the values left
unset. An optimizer other than the recipe's, given without a learning rate, gets that
optimizer's plain default (:data:`OPTIMIZER_LR`) and no warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowbit.errors import ConfigError, unknown_name
from lowbit.train.config import OPTIMIZERS, TrainConfig

FLOAT = "none"  # the quantizer name of a float run
OPTIMIZER_LR = {"sgd": 0.05, "adam": 1e-3}  # an optimizer's default LR when the recipe uses another one


@dataclass(frozen=True)
class Recipe:
    optimizer: str
    lr: float
    warmup_epochs: float = 0.0

    def resolve(self, optimizer: str | None = None, lr: float | None = None,
                warmup_epochs: float | None = None) -> Recipe:
        """The recipe with the user's explicit values in place of its own."""
        chosen = optimizer or self.optimizer
        if chosen not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {chosen!r}; choose one of {', '.join(OPTIMIZERS)}")
        if chosen != self.optimizer:
            return Recipe(chosen, lr if lr is not None else OPTIMIZER_LR[chosen],
                          warmup_epochs if warmup_epochs is not None else 0.0)
        return Recipe(chosen, lr if lr is not None else self.lr,
                      warmup_epochs if warmup_epochs is not None else self.warmup_epochs)

    def train_config(self, epochs: int, **options: Any) -> TrainConfig:
        """A validated :class:`TrainConfig` with this recipe's optimizer, LR and warm-up."""
        return TrainConfig(epochs=epochs, optimizer=self.optimizer, lr=self.lr,
                           warmup_epochs=self.warmup_epochs, **options)

    def describe(self) -> str:
        text = f"{self.optimizer} lr {self.lr:g}"
        return text + (f", warm-up {self.warmup_epochs:g} epoch" if self.warmup_epochs else "")


# lowbit train: (quantizer, from float weights?, batch norm in the network?) -> recipe. Chosen on
# validation (module docstring): per kind of network, the best worst cell (accuracy / float
# accuracy) over weight bits {1, 2, 4} x activation bits {32, 2} of LeNet-5/digits (no batch
# norm) and {1, 2} x {32, 2} of conv1d/mnist1d (batch norm after every conv). Without batch norm,
# SGD at 0.05 diverges at low bits (DoReFa w2 LeNet-5 at chance); with it, Adam at 0.001 learns
# too slowly from scratch (conv1d DoReFa w2a2 52% of float after 10 epochs). Float training keeps
# SGD 0.05 (not part of the grid).
_QAT: dict[tuple[str, bool, bool], Recipe] = {
    (FLOAT, False, False): Recipe("sgd", 0.05), (FLOAT, True, False): Recipe("sgd", 0.05),
    (FLOAT, False, True): Recipe("sgd", 0.05), (FLOAT, True, True): Recipe("sgd", 0.05),
    # no batch norm (LeNet-5)
    ("dorefa", False, False): Recipe("adam", 1e-3), ("dorefa", True, False): Recipe("adam", 1e-3),
    ("wrpn", False, False): Recipe("adam", 1e-3), ("wrpn", True, False): Recipe("sgd", 0.01),
    ("pact", False, False): Recipe("adam", 1e-3), ("pact", True, False): Recipe("sgd", 0.01),
    ("lsq", False, False): Recipe("sgd", 0.05, warmup_epochs=1.0), ("lsq", True, False): Recipe("adam", 1e-3),
    ("twn", False, False): Recipe("sgd", 0.05), ("twn", True, False): Recipe("adam", 1e-3),
    # batch norm (conv1d, ResNets, ...)
    ("dorefa", False, True): Recipe("sgd", 0.05), ("dorefa", True, True): Recipe("sgd", 0.01),
    ("wrpn", False, True): Recipe("sgd", 0.05, warmup_epochs=1.0), ("wrpn", True, True): Recipe("sgd", 0.01),
    ("pact", False, True): Recipe("sgd", 0.05, warmup_epochs=1.0), ("pact", True, True): Recipe("sgd", 0.01),
    ("lsq", False, True): Recipe("sgd", 0.05), ("lsq", True, True): Recipe("sgd", 0.01),
    ("twn", False, True): Recipe("sgd", 0.05), ("twn", True, True): Recipe("sgd", 0.01),
}

# The phases of the methods built on top of quantized training.
WAVEQ_PHASE = {False: Recipe("sgd", 0.05), True: Recipe("sgd", 0.01)}  # by from-float
WAVEQ_EPOCHS, WAVEQ_FINETUNE_EPOCHS = 10, 5
QUANTIZED_FINETUNE = Recipe("sgd", 0.002)  # after a method picked a plan (WaveQ, the search, DCQ)
DCQ_SECTIONS = Recipe("sgd", 0.01)
SEARCH_EVALUATION = Recipe("sgd", 0.01)  # the search's short per-plan fine-tunes (constant LR)
WAVEQ_SCALE = "learned"  # WaveQ's fine-tune quantizer: a learned scale seeded at WaveQ's α
DCQ_SCALE = "learned"  # DCQ's sections match the teacher's feature magnitudes


def qat_recipe(quantizer: str, *, from_float: bool, batch_norm: bool) -> Recipe:
    """The ``lowbit train`` recipe of ``quantizer`` ('none' = float), from scratch or from float
    weights, for a network with or without batch norm (``lowbit.nn.has_batch_norm(model)``)."""
    key = (quantizer, bool(from_float), bool(batch_norm))
    if key not in _QAT:
        raise unknown_name("quantizer", quantizer, sorted({q for q, _, _ in _QAT}))
    return _QAT[key]


def recipe_table() -> list[dict[str, str]]:
    """Rows for the README: quantizer, then scratch / from float without and with batch norm."""
    names = sorted({q for q, _, _ in _QAT}, key=lambda q: (q != FLOAT, q))
    return [{"quantizer": "float" if q == FLOAT else q,
             **{f"{'bn' if bn else 'plain'}_{'float' if ff else 'scratch'}": _QAT[(q, ff, bn)].describe()
                for bn in (False, True) for ff in (False, True)}} for q in names]
