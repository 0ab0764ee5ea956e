"""SinReQ on plain training (METHODS.md section 2): the hooks ``lowbit train`` adds to a quantized
run, SinReQ when asked and, for every quantized run, the grid distance of the weights to their
quantizer's levels.

SinReQ modes: ``qat`` (the papers' main mode) adds the penalty on top of quantized training;
``pre`` trains with a float forward pass (the quantizers stay attached so the penalty uses their
geometry) and switches fake quantization on only after training: a regularized float phase
followed by quantization.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.nn import set_fake_quant
from lowbit.reg.schedules import make_schedule
from lowbit.reg.sinreq import SinReQ, grid_distance
from lowbit.train.hooks import MethodHooks

SINREQ_MODES = ("qat", "pre")


def grid_distance_fields(epoch: int, model: nn.Module) -> dict[str, Any]:
    """metrics.jsonl fields: mean and per-layer grid distance (mean |u - nearest level| / Δ)."""
    mean, per_layer = grid_distance(model)
    return {"grid_distance": mean, "grid_distance_layers": per_layer}


def quantized_run_hooks(sinreq: float | None, schedule: str = "constant", domain: str = "aligned",
                        mode: str = "qat", train_quantizer: bool = False) -> MethodHooks:
    """Grid distance always; SinReQ with weight ``sinreq`` and its schedule when ``sinreq`` is set
    (``train_quantizer``: its gradient may also move the quantizers' learned scale or step)."""
    settings = {"lambda": sinreq, "schedule": schedule, "domain": domain, "mode": mode,
                "train_quantizer": train_quantizer}

    def result_fields(model: nn.Module) -> dict[str, Any]:
        fields = grid_distance_fields(-1, model)
        if sinreq is not None:
            fields["sinreq"] = settings
        return fields

    if sinreq is None:
        return MethodHooks(callbacks=[grid_distance_fields], result_fields=result_fields)
    lam = make_schedule(schedule, sinreq)
    pre = mode == "pre"
    return MethodHooks(suffix="+sinreq" + ("-pre" if pre else ""),
                       loss_terms=lambda model: [SinReQ(model, domain=domain, train_quantizer=train_quantizer)
                                                 .as_loss_term(lam)],
                       callbacks=[grid_distance_fields], result_fields=result_fields,
                       config={f"sinreq_{k}" if k != "lambda" else "sinreq": v for k, v in settings.items()},
                       before_fit=(lambda model: set_fake_quant(model, False)) if pre else (lambda model: None),
                       after_fit=(lambda model: set_fake_quant(model, True)) if pre else (lambda model: None))
