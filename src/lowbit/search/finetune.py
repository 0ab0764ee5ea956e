"""The accuracy of a plan by a short quantized fine-tune, as ReLeQ (Elthakeb et al.), METHODS.md
section 5 measures it: "a short quantized fine-tune from the float weights (a few hundred steps on a
training subset) and evaluation on a validation split held out from training (never the test split)".

For each plan: deep-copy the float model, ``quantize_`` it with the plan and the quantizer spec,
train ``steps`` SGD/Adam steps (constant learning rate, cross-entropy plus the quantizers' own loss
terms, e.g. PACT's) on the training batches, then measure top-1 accuracy on the validation batches.

- The caller passes ``train`` (a re-iterable of ``(x, y)`` batches, e.g. an ``ArrayLoader`` over a
  fixed training subset) and ``val`` (batches held out from that training data, e.g. from
  ``lowbit.data.hold_out``). Never pass the test split: the search would then select plans on
  the data the final accuracy is reported on.
- Deterministic: each evaluation seeds torch (inside ``torch.random.fork_rng``, so the caller's RNG
  is untouched) and replays the loader's epochs 0, 1, ... (``set_epoch`` when it has one: the
  evaluator sets the epoch of the loader it was given), so the same plan gives the same accuracy
  (on CPU, with the same thread count).
- The steps are the shared ones of ``lowbit.train`` (``Stepper`` on a step budget,
  ``train_budget``). A non-finite loss stops that fine-tune early; the plan is evaluated as it
  stands (counted in ``diverged``), so a search is not killed by one bad plan.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import ConfigError
from lowbit.nn import aux_loss_terms
from lowbit.nn.convert import is_quantizer_param, quantize_, quantized_layers
from lowbit.quant.registry import QuantizerSpec
from lowbit.recipes import SEARCH_EVALUATION
from lowbit.search.space import Choices, SearchSpace
from lowbit.train import Stepper, TrainConfig, evaluate, train_budget

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state dict (names and values): which float weights a cache belongs to."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FineTuneEvaluator:
    def __init__(self, model: nn.Module, space: SearchSpace, train: Batches, val: Batches, *, steps: int = 200,
                 quantizer: QuantizerSpec | str = "dorefa", lr: float = SEARCH_EVALUATION.lr,
                 optimizer: str = SEARCH_EVALUATION.optimizer,
                 momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0, device: str = "cpu") -> None:
        if quantized_layers(model):
            raise ConfigError("FineTuneEvaluator needs the float model (it has quantized layers)")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
        self.space = space
        self.train, self.val = train, val
        self.steps = steps
        self.spec = QuantizerSpec(quantizer) if isinstance(quantizer, str) else quantizer
        self.config = TrainConfig(epochs=1, lr=lr, optimizer=optimizer, momentum=momentum,
                                  weight_decay=weight_decay, schedule="constant", device=device)
        self.seed = int(seed)
        self.device = torch.device(device)
        self._float = copy.deepcopy(model).to(self.device)
        self._fingerprint = weights_fingerprint(self._float)
        self._float_accuracy: float | None = None
        self.diverged = 0

    def float_accuracy(self) -> float:
        if self._float_accuracy is None:
            self._float_accuracy = evaluate(self._float, self.val, self.device)[1]
        return self._float_accuracy

    def __call__(self, choices: Choices) -> float:
        plan = self.space.to_plan(choices)
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else None):
            torch.manual_seed(self.seed)
            model = copy.deepcopy(self._float)
            quantize_(model, plan, self.spec)
            self._fine_tune(model)
            return evaluate(model, self.val, self.device)[1]

    def _fine_tune(self, model: nn.Module) -> None:
        """``self.steps`` steps of the shared training step; a non-finite loss stops it (``diverged``)."""
        if self.steps == 0:
            return
        stepper = Stepper(model, self.config, no_decay=is_quantizer_param)
        model.train()
        run = train_budget(stepper, self.train, functools.partial(self._loss, model), steps=self.steps,
                           terms=aux_loss_terms(model), on_nonfinite="stop",
                           name="FineTuneEvaluator: the training loader")
        if run.diverged:
            self.diverged += 1

    def _loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        x, y = x.to(self.device), y.to(self.device)
        return F.cross_entropy(model(x), y)

    def describe(self) -> dict[str, Any]:
        return {"class": "FineTuneEvaluator", "steps": self.steps, "quantizer": asdict(self.spec),
                "train": self.config.to_dict(), "seed": self.seed, "weights_sha256": self._fingerprint,
                "train_batches": len(self.train) if hasattr(self.train, "__len__") else None,
                "val_batches": len(self.val) if hasattr(self.val, "__len__") else None}
