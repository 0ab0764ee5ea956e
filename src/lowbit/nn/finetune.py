"""The quantized fine-tune every method ends with (WaveQ at its learned plan, DCQ after stitching,
the search at its best plan): ``fit`` with the quantizers' own loss terms (PACT's L2 on α), no
weight decay on quantizer parameters, and each epoch's metrics tagged with its phase."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lowbit.nn.convert import is_quantizer_param, quantizers_with_aux_loss
from lowbit.train import QUIET, LossTerm, MetricsWriter, Reporter, TrainConfig, fit
from lowbit.train.loop import Batches


def aux_loss_terms(model: nn.Module) -> list[LossTerm]:
    """The quantizers' own loss terms as one ``LossTerm`` (none when no quantizer has one)."""
    aux = quantizers_with_aux_loss(model)  # found once, not at every step
    if not aux:
        return []
    return [LossTerm("quantizer_aux", lambda m: torch.stack([q.aux_loss() for q in aux]).sum())]


def finetune_quantized(model: nn.Module, train_loader: Sequence, config: TrainConfig, *,
                       eval_loader: Batches | None = None, eval_name: str = "test",
                       metrics: MetricsWriter | None = None, reporter: Reporter = QUIET,
                       phase: str = "finetune") -> list[dict[str, Any]]:
    """Train the quantized ``model`` as ``config`` says; return the epochs' metrics records."""
    return fit(model, train_loader, config, eval_loader=eval_loader, eval_name=eval_name,
               loss_terms=aux_loss_terms(model), callbacks=[lambda epoch, m: {"phase": phase}],
               no_decay=is_quantizer_param, metrics=metrics, reporter=reporter).history
