"""The ``result.json`` fields every run writes (DESIGN.md, "Run folder"): the plan's costs read off
the model, and the record of the run itself (command, wall time, versions)."""

from __future__ import annotations

import sys
import time
from typing import Any

from torch import nn

from lowbit.costs import model_costs
from lowbit.nn import layer_bits
from lowbit.runs.folder import environment


def model_fields(model: nn.Module) -> dict[str, Any]:
    """Per-layer ``weight_bits``/``act_bits``, ``avg_bits``, ``weighted_bits``, packed ``size_bytes``,
    ``float_size_bytes`` and ``compression`` of ``model`` as it is quantized now."""
    costs = model_costs(model)
    bits = layer_bits(model)
    return {"weight_bits": {n: b.weight for n, b in bits.items()}, "act_bits": {n: b.act for n, b in bits.items()},
            "avg_bits": costs.avg_bits, "weighted_bits": costs.weighted_bits, "size_bytes": costs.size_bytes,
            "float_size_bytes": costs.float_size_bytes, "compression": costs.compression}


def record_fields(command: str | None, start: float) -> dict[str, Any]:
    """``command`` (as typed, else this process's argv), ``wall_s`` since ``start`` (perf_counter),
    ``version`` and the ``environment`` (versions, machine)."""
    env = environment()
    return {"command": command or " ".join(["lowbit", *sys.argv[1:]]), "wall_s": time.perf_counter() - start,
            "version": env["lowbit"], "environment": env}
