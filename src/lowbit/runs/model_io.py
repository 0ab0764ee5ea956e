"""Save and load a trained (possibly quantized) model with what it takes to rebuild it.

A model file is a lowbit checkpoint (see ``lowbit.train.checkpoint``) whose payload holds the
state dict and ``meta``: the model arguments, the quantizer spec and the plan. Loading rebuilds
the architecture, re-applies ``quantize_`` with the recorded plan and quantizer, then loads the
weights, so a quantized model comes back quantized.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.errors import CheckpointError, ConfigError, LowbitError
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec
from lowbit.runs.build import ModelArgs
from lowbit.train.checkpoint import load_checkpoint, save_checkpoint

MODEL_FILE = "model.ckpt"
TRAIN_STATE_FILE = "checkpoint.ckpt"


def model_meta(args: ModelArgs, spec: QuantizerSpec | None, plan: Plan | None) -> dict[str, Any]:
    """The JSON-able description stored with weights (as a JSON string: safe to load)."""
    return {"meta": json.dumps({"model": args.to_dict(), "quantizer": spec.to_dict() if spec else None,
                                "plan": plan.to_dict() if plan else None})}


def save_model(path: str | Path, model: nn.Module, args: ModelArgs, spec: QuantizerSpec | None,
               plan: Plan | None, extra: dict[str, Any] | None = None) -> None:
    save_checkpoint(path, {"kind": "model", "model": model.state_dict(), **model_meta(args, spec, plan),
                           **(extra or {})})


def read_meta(payload: dict[str, Any], source: Path) -> tuple[ModelArgs, QuantizerSpec | None, Plan | None]:
    try:
        meta = json.loads(payload["meta"])
        args = ModelArgs.from_dict(meta["model"])
        spec = QuantizerSpec.from_dict(meta["quantizer"]) if meta.get("quantizer") else None
        plan = Plan.from_dict(meta["plan"]) if meta.get("plan") else None
    except LowbitError as exc:
        raise CheckpointError(f"{source}: invalid model description: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{source}: missing or invalid model description ({exc})") from None
    return args, spec, plan


def resolve_model_file(path: str | Path) -> Path:
    """A run folder means its ``model.ckpt``; a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
        if not path.exists():
            raise CheckpointError(f"run folder {path.parent} has no {MODEL_FILE} (did the run finish?)")
    elif not path.exists():
        raise CheckpointError(f"model not found: {path} (expected a model file or a run folder)")
    return path


def load_model(path: str | Path) -> tuple[nn.Module, ModelArgs, QuantizerSpec | None, Plan | None]:
    """Rebuild the model stored at ``path`` (a model file or a run folder), quantized as it was."""
    path = resolve_model_file(path)
    payload = load_checkpoint(path)
    args, spec, plan = read_meta(payload, path)
    model = args.build()
    if spec is not None and spec.name != NO_QUANTIZER and plan is not None:
        quantize_(model, plan, spec)
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the recorded model: {exc}") from None
    return model, args, spec, plan


def float_model_args(path: str | Path, what: str = "--teacher") -> ModelArgs:  # DCQ's teacher
    """The architecture stored at ``path``, which must be a float model (a teacher, a float run)."""
    path = resolve_model_file(path)
    args, spec, _ = read_meta(load_checkpoint(path), path)
    if spec is not None and spec.name != NO_QUANTIZER:
        raise ConfigError(f"{what} {path} is a quantized model ({spec.name}); DCQ starts from a float teacher")
    return args


def load_float_weights(model: nn.Module, path: str | Path) -> ModelArgs:
    """Copy the float weights stored at ``path`` into the float ``model`` (``--init``).

    Works from a float or a quantized checkpoint (its float shadow weights); quantizer state is
    ignored. Raises CheckpointError if the architectures differ.
    """
    path = resolve_model_file(path)
    payload = load_checkpoint(path)
    args, _, _ = read_meta(payload, path)
    stored = payload.get("model", {})
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in stored]
    wrong = [k for k in wanted if k in stored and stored[k].shape != wanted[k].shape]
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[:3]}"
        raise CheckpointError(f"--init {path} (model {args.name}) does not fit this model: {detail}")
    model.load_state_dict({k: stored[k] for k in wanted})
    return args
