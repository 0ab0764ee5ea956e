"""``quantize_(model, plan, quantizer)``: turn any float model into a quantized one, in place.

Works on any ``nn.Module`` built from Conv1d / Conv2d (grouped and depthwise included) and Linear
layers. The float weights stay the parameters the optimizer updates (QAT with an FP copy); the
quantized layers share them with the float ones they replace, so an optimizer built before the
call still holds the right tensors (but not new quantizer parameters such as LSQ's step).
Re-applying replaces the quantizers instead of stacking them; ``dequantize_`` turns the model
back into a float one (optionally baking the fake-quantized weights in).

Output scale ``auto``: the weight quantizer's ``auto_scale`` decides, told whether the layer's next
leaf module (in registration order) is a batch norm: ``none`` there (paper-exact, the norm absorbs
the scale) and ``max`` elsewhere, except WRPN, whose clip range is not scale-free (``max`` always).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from lowbit.errors import BitwidthError
from lowbit.nn.modules import QUANT_CLASS, QuantLayer, empty_like_layer, float_type
from lowbit.plan import LayerBits, Plan
from lowbit.quant.base import ActQuantizer
from lowbit.quant.bits import FLOAT_BITS
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def quantizable_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Conv1d / Conv2d / Linear layers (float or quantized) by name, in registration order."""
    return OrderedDict((name, m) for name, m in model.named_modules() if name and float_type(m) is not None)


def quantized_layers(model: nn.Module) -> "OrderedDict[str, QuantLayer]":
    """The layers currently quantized (weights or activations below 32 bits)."""
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, QuantLayer))


def layer_bits(model: nn.Module) -> "OrderedDict[str, LayerBits]":
    """Current bits of every quantizable layer (32 for float layers)."""
    return OrderedDict(
        (name, LayerBits(m.weight_bits, m.act_bits) if isinstance(m, QuantLayer) else LayerBits(FLOAT_BITS, FLOAT_BITS))
        for name, m in quantizable_layers(model).items()
    )


def followed_by_norm(model: nn.Module) -> set[str]:
    """Names of quantizable layers whose next leaf module is a normalization layer."""
    layers = [name for name, m in model.named_modules() if name and float_type(m) is not None]
    leaves = [(name, m) for name, m in model.named_modules()
              if name and (float_type(m) is not None or not any(True for _ in m.children()))
              and not any(name.startswith(layer + ".") for layer in layers)]  # skip a layer's quantizers
    return {name for (name, m), (_, nxt) in zip(leaves, leaves[1:])
            if float_type(m) is not None and isinstance(nxt, _NORM_TYPES)}


def has_batch_norm(model: nn.Module) -> bool:
    """Whether the network normalizes its features anywhere (batch, group or layer norm): such
    networks take larger steps at low bits than those without (``lowbit.recipes``)."""
    return any(isinstance(m, _NORM_TYPES) for m in model.modules())


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _as_float(module: nn.Module) -> nn.Module:
    return empty_like_layer(module, float_type(module)) if isinstance(module, QuantLayer) else module


def quantize_(model: nn.Module, plan: Plan | None = None,
              quantizer: QuantizerSpec | str = "dorefa") -> "OrderedDict[str, LayerBits]":
    """Quantize ``model`` in place following ``plan``; return the resolved bits per layer.

    ``plan`` None means ``Plan.uniform(4)`` (4-bit weights, float activations, first/last at 8).
    Invalid bits for the chosen quantizer raise ``BitwidthError`` naming the layer, before any
    layer is changed.
    """
    spec = QuantizerSpec(quantizer) if isinstance(quantizer, str) else quantizer
    plan = plan if plan is not None else Plan.uniform(4)
    layers = quantizable_layers(model)
    resolved = plan.resolve(list(layers))
    if spec.name == NO_QUANTIZER:
        low = [n for n, b in resolved.items() if not b.is_float]
        if low:
            raise BitwidthError(f"quantizer 'none' keeps every layer float, but the plan asks for low bits on {low[0]!r}")
    normed = followed_by_norm(model)

    built: dict[str, nn.Module] = {}
    for name, module in layers.items():  # build everything first: a bad bitwidth changes nothing
        bits = resolved[name]
        flt = _as_float(module)
        if bits.is_float:
            built[name] = flt
            continue
        scale = spec.scale if spec.scale != "auto" else spec.family.weight.auto_scale(name in normed)
        wq = spec.make_weight(bits.weight, flt.weight, name, scale) if bits.weight != FLOAT_BITS else None
        aq = spec.make_act(bits.act, name) if bits.act != FLOAT_BITS else None
        qmod = empty_like_layer(flt, QUANT_CLASS[type(flt)])
        qmod._attach(name, wq, aq)
        qmod.to(flt.weight.device)
        qmod.train(flt.training)  # the new quantizers follow the layer's mode (LSQ initialises in training)
        built[name] = qmod
    for name, module in built.items():
        _set_module(model, name, module)
    return resolved


@torch.no_grad()
def dequantize_(model: nn.Module, bake: bool = False) -> nn.Module:
    """Replace quantized layers with float ones, in place.

    ``bake=False`` keeps the float shadow weights (undo quantization); ``bake=True`` writes the
    fake-quantized weights into new float parameters (a float model computing what the quantized
    one computed, activation quantization aside).
    """
    for name, module in quantized_layers(model).items():
        flt = _as_float(module)
        if bake:
            flt.weight = nn.Parameter(module.effective_weight().detach().clone())
        _set_module(model, name, flt)
    return model


def is_quantizer_param(name: str) -> bool:
    """Quantizer parameters (learned scales, LSQ steps, PACT's alpha): optimizers give them no weight decay."""
    return "weight_quantizer." in name or "input_quantizer." in name


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Run every quantized layer's forward pass fake-quantized (True) or float (False)."""
    for layer in quantized_layers(model).values():
        layer.fake_quant = enabled


def quantizers_with_aux_loss(model: nn.Module) -> list[ActQuantizer]:
    """The activation quantizers that add a loss term of their own (PACT's L2 on α)."""
    return [m for m in model.modules()
            if isinstance(m, ActQuantizer) and type(m).aux_loss is not ActQuantizer.aux_loss]


def quantizer_aux_loss(model: nn.Module) -> torch.Tensor:
    """The sum of the quantizers' own loss terms (PACT's L2 on α); a zero tensor if none."""
    terms = [t for t in (m.aux_loss() for m in quantizers_with_aux_loss(model)) if t is not None]
    if not terms:
        ref = next(model.parameters(), None)
        return torch.zeros((), device=ref.device if ref is not None else "cpu")
    return torch.stack(terms).sum()
