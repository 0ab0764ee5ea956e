"""quantize_ on every registered model: forward, backward, no NaN, the plan respected."""

from __future__ import annotations

import pytest
import torch

from lowbit.models import create_model, list_models, model_info
from lowbit.nn import layer_bits, quantizable_layers, quantize_, quantized_layers
from lowbit.plan import Plan


def _input(name: str, batch: int = 2) -> torch.Tensor:
    info = model_info(name)
    size = max(info.min_input_size, 16 if info.kind == "image" else 40)
    shape = (batch, info.default_in_channels, size, size) if info.kind == "image" else (batch, 1, size)
    return torch.randn(shape), size


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("quantizer", ["dorefa", "lsq", "twn"])
def test_quantize_every_zoo_model(name: str, quantizer: str) -> None:
    torch.manual_seed(0)
    x, size = _input(name)
    model = create_model(name, input_size=size, width_mult=0.25)
    names = list(quantizable_layers(model))
    plan = Plan.uniform(2, 4)
    resolved = quantize_(model, plan, quantizer)
    assert list(resolved) == names
    bits = layer_bits(model)
    assert bits[names[0]].weight == 8 and bits[names[0]].act == 32
    assert bits[names[-1]].weight == 8 and bits[names[-1]].act == 8
    for inner in names[1:-1]:
        assert (bits[inner].weight, bits[inner].act) == (2, 4)
    assert len(quantized_layers(model)) == len(names)
    model.train()
    out = model(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), pname
    assert all(m.weight.grad is not None for m in quantized_layers(model).values())
