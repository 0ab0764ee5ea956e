"""The hooks ``lowbit train`` adds to a quantized run: SinReQ (METHODS.md section 2) when asked,
and the grid distance of the weights to their quantizer's levels for every quantized run."""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.reg.schedules import make_schedule
from lowbit.reg.sinreq import SinReQ, grid_distance
from lowbit.runs.hooks import MethodHooks


def grid_distance_fields(epoch: int, model: nn.Module) -> dict[str, Any]:
    """metrics.jsonl fields: mean and per-layer grid distance (mean |u - nearest level| / Δ)."""
    mean, per_layer = grid_distance(model)
    return {"grid_distance": mean, "grid_distance_layers": per_layer}


def quantized_run_hooks(sinreq: float | None, schedule: str = "constant", domain: str = "aligned") -> MethodHooks:
    """Grid distance always; SinReQ with weight ``sinreq`` and its schedule when ``sinreq`` is set."""
    def result_fields(model: nn.Module) -> dict[str, Any]:
        mean, per_layer = grid_distance(model)
        fields: dict[str, Any] = {"grid_distance": mean, "grid_distance_layers": per_layer}
        if sinreq is not None:
            fields["sinreq"] = {"lambda": sinreq, "schedule": schedule, "domain": domain}
        return fields

    if sinreq is None:
        return MethodHooks(callbacks=[grid_distance_fields], result_fields=result_fields)
    lam = make_schedule(schedule, sinreq)
    return MethodHooks(suffix="+sinreq", loss_terms=lambda model: [SinReQ(model, domain=domain).as_loss_term(lam)],
                       callbacks=[grid_distance_fields], result_fields=result_fields,
                       config={"sinreq": sinreq, "sinreq_schedule": schedule, "sinreq_domain": domain})
