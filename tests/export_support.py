"""Shared by the export tests: a small quantized model with batch-norm statistics and data-dependent
quantizer state taken from random data, and its packed form."""

from __future__ import annotations

import torch

from lowbit.export.packed import pack_model
from lowbit.models import model_info
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.quant import QuantizerSpec
from lowbit.runs.build import ModelArgs


def input_shape(args: ModelArgs) -> tuple[int, ...]:
    """(channels, *spatial) of one input of the zoo model ``args`` (1-d for sequence models)."""
    side = (args.input_size,) * (2 if model_info(args.name).kind == "image" else 1)
    return (args.in_channels, *side)


def quantized(args: ModelArgs, family: str, plan: Plan, seed: int = 0):
    """(quantized model in eval mode, its PackedModel)."""
    torch.manual_seed(seed)
    model = args.build()
    spec = QuantizerSpec(family)
    quantize_(model, plan, spec)
    model.train()
    with torch.no_grad():  # batch-norm statistics and LSQ's activation step from random data
        for _ in range(2):
            model(torch.randn(16, *input_shape(args)))
    model.eval()
    return model, pack_model(model, args, spec, plan)
