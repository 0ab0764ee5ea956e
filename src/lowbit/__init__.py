"""lowbit: deep (below 8-bit) quantization of neural networks in PyTorch.

The everyday API is importable from here (loaded on first use, so ``import lowbit`` and the
command line stay light)::

    import lowbit
    model = lowbit.create_model("lenet5")
    lowbit.quantize_(model, lowbit.Plan.uniform(2), "dorefa")

Each method's entry point lives in its package: ``lowbit.reg.SinReQ``,
``lowbit.reg.waveq_quantize``, ``lowbit.distill.dcq_quantize``, ``lowbit.search.releq_search``
(and ``random_search``, ``greedy_search``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("Plan", "PlanEntry", "LayerBits"), "lowbit.plan"),
    **dict.fromkeys(("QuantizerSpec", "list_quantizers"), "lowbit.quant"),
    **dict.fromkeys(("quantize_", "dequantize_", "layer_bits", "quantized_layers", "has_batch_norm"), "lowbit.nn"),
    **dict.fromkeys(("create_model", "list_models"), "lowbit.models"),
    **dict.fromkeys(("load_dataset", "list_datasets", "ArrayLoader", "TensorData", "DatasetSplits",
                     "channel_stats", "hold_out"), "lowbit.data"),
    **dict.fromkeys(("fit", "evaluate", "TrainConfig", "LossTerm"), "lowbit.train"),
    **dict.fromkeys(("Recipe", "qat_recipe"), "lowbit.recipes"),
    **dict.fromkeys(("check_health",), "lowbit.health"),
    **dict.fromkeys(("model_costs",), "lowbit.costs"),
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
