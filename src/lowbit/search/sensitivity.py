"""Per-layer sensitivity of a float model to quantization, for HAWQ-style bit allocation (issue 19;
Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization", 2020, and Yao et al.,
"HAWQ-V3: Dyadic Neural Network Quantization", 2021). For each searched layer ``l``:

- ``trace``: a Hutchinson estimate of ``tr(H_l)``, the trace of the Hessian of the training loss
  with respect to the layer's weight ``W_l``. The loss is the mean cross-entropy over ``batches``
  training batches (each weighted by its size), computed in eval mode (batch norm on its running
  statistics, no dropout), so the Hessian is that of a fixed function of the weights. With
  ``g = ∇L`` (``torch.autograd.grad(..., create_graph=True)``, once per batch for all layers at
  once), each probe ``v`` (Rademacher: ±1 entries, one independent draw per batch and per probe)
  gives ``vᵀ H v`` for every layer in one more backward pass (``Hv = ∇(gᵀv)``; optionally
  ``probe_chunk`` probes per pass with ``is_grads_batched``). The probe is drawn over all the
  layers together, so ``v_lᵀ (Hv)_l = v_lᵀ H_ll v_l + Σ_{m≠l} v_lᵀ H_lm v_m``; the cross terms have
  mean 0, so this is an unbiased sample of ``tr(H_ll)`` (HAWQ's per-block estimate). The estimate
  is the mean of ``probes`` samples and ``trace_se`` its standard error, ``std / sqrt(probes)``.
- ``perturbation[b]``: ``||Q_b(W_l) - W_l||²``, with ``Q_b`` the layer's weight quantizer at ``b``
  bits exactly as ``quantize_`` builds it for the search (the same family, scale mode and
  parameters): the model is copied, quantized with every searched layer at ``b`` bits, and each
  layer's ``effective_weight()`` read. A quantizer whose output scale is ``none`` (DoReFa/PACT
  weights behind a batch norm, ``scale=auto``) outputs unit-range weights whatever the scale of
  ``W``; the norm after the layer absorbs any per-tensor scale, so there the perturbation is taken
  after the best per-tensor rescaling, ``min_c ||c Q_b(W) - W||² = ||W||² - <Q, W>² / ||Q||²``
  (``perturbation_raw`` keeps the unscaled one).
- ``omega(l, b) = ½ (tr(H_l) / n_l) ||Q_b(W_l) - W_l||²``: the second-order estimate of the loss
  increase (HAWQ-V2's sensitivity, the Hessian replaced by its mean eigenvalue ``tr(H)/n``).
- Activations, when the space searches them: the same with the Hessian with respect to the
  layer's *input* (a forward pre-hook hands the layer a clone of its input, so the Hessian is that
  of perturbing the input of this layer only, not of the other consumers of the tensor, such as a
  residual branch). The loss over the batches is a sum over their samples, so its Hessian with
  respect to all the batches' inputs together is block-diagonal; ``act_trace`` estimates its
  trace (each probe's ``vᵀHv`` summed over the batches), ``act_elements`` counts those inputs'
  elements and ``act_perturbation[a] = Σ_batches ||Q_a(x_b) - x_b||²`` is the squared error of
  the layer's activation quantizer at ``a`` bits on them (one fresh quantizer per layer and
  bitwidth, called in training mode on the batches in order, so a data-initialised one such as
  LSQ's initialises on the first). The proxy is then the same second-order estimate,
  ``½ (act_trace / act_elements) act_perturbation[a]`` (:meth:`Sensitivity.act_omega`): the
  input Hessian replaced by its mean eigenvalue, with the quantizer's error on these batches
  standing for its error in general. The first layer's input is the network input and never
  searched.
- ``loss_delta[b]`` (optional, ``val`` given): the measured change of the validation loss when
  only this layer's weights are quantized at ``b`` bits (every other layer float, no
  fine-tuning), and ``act_loss_delta[a]`` for its input alone at ``a`` bits.

The result is JSON (:meth:`Sensitivity.save`); :func:`load_or_compute` reuses a saved one when the
float weights' fingerprint (``weights_fingerprint``) and every setting match, so a resumed search
does not recompute it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import CheckpointError, ConfigError
from lowbit.io import atomic_write_text
from lowbit.nn.convert import quantizable_layers, quantize_, quantized_layers
from lowbit.plan import LayerBits, Plan, PlanEntry
from lowbit.quant.bits import FLOAT_BITS
from lowbit.quant.registry import QuantizerSpec
from lowbit.search.finetune import weights_fingerprint
from lowbit.search.space import SearchSpace

SENSITIVITY_FORMAT = "lowbit-search-sensitivity"
SENSITIVITY_VERSION = 1
SENSITIVITY_FILE = "sensitivity.json"

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LayerSensitivity:
    """One searched layer's numbers (module docstring); bit keys are ints."""

    name: str
    params: int
    trace: float
    trace_se: float
    perturbation: dict[int, float]
    perturbation_raw: dict[int, float]
    act_trace: float | None = None
    act_trace_se: float | None = None
    act_elements: int | None = None
    act_perturbation: dict[int, float] | None = None
    loss_delta: dict[int, float] | None = None
    act_loss_delta: dict[int, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("perturbation", "perturbation_raw", "act_perturbation", "loss_delta", "act_loss_delta"):
            if data[key] is not None:
                data[key] = {str(b): v for b, v in data[key].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSensitivity:
        out = dict(data)
        for key in ("perturbation", "perturbation_raw", "act_perturbation", "loss_delta", "act_loss_delta"):
            if out.get(key) is not None:
                out[key] = {int(b): float(v) for b, v in out[key].items()}
        return cls(**out)


@dataclass
class Sensitivity:
    """Every searched layer's sensitivity and how it was measured (module docstring)."""

    layers: dict[str, LayerSensitivity]
    settings: dict[str, Any] = field(default_factory=dict)  # probes, batches, samples, seed, quantizer, ...
    fingerprint: str = ""
    loss_float: float | None = None  # validation loss of the float model (with loss_delta)
    wall_s: float = 0.0

    def omega(self, name: str, bits: int) -> float:
        """½ (tr(H)/n) ||Q_b(W) - W||²: the estimated loss increase of the layer's weights at ``bits``."""
        layer = self.layers[name]
        return 0.5 * layer.trace / layer.params * layer.perturbation[bits]

    def act_omega(self, name: str, bits: int) -> float:
        """½ (tr(H_x)/n_x) ||Q_a(x) - x||² of the layer's input at ``bits`` (0 when not measured or
        float; module docstring)."""
        layer = self.layers[name]
        if bits == FLOAT_BITS or layer.act_perturbation is None or layer.act_trace is None or not layer.act_elements:
            return 0.0
        return 0.5 * layer.act_trace / layer.act_elements * layer.act_perturbation[bits]

    def to_dict(self) -> dict[str, Any]:
        return {"format": SENSITIVITY_FORMAT, "version": SENSITIVITY_VERSION, "fingerprint": self.fingerprint,
                "settings": self.settings, "loss_float": self.loss_float, "wall_s": self.wall_s,
                "layers": [layer.to_dict() for layer in self.layers.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sensitivity:
        if data.get("format") != SENSITIVITY_FORMAT or data.get("version") != SENSITIVITY_VERSION:
            raise ConfigError(f"not a {SENSITIVITY_FORMAT} version {SENSITIVITY_VERSION} document")
        layers = [LayerSensitivity.from_dict(item) for item in data["layers"]]
        return cls({layer.name: layer for layer in layers}, dict(data.get("settings", {})),
                   str(data.get("fingerprint", "")), data.get("loss_float"), float(data.get("wall_s", 0.0)))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Sensitivity:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read the sensitivity file {path}: {exc}") from None
        try:
            return cls.from_dict(data)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a valid sensitivity file: {exc}") from None


# ---- Hutchinson ---------------------------------------------------------------------------------
def _rademacher(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    v = torch.randint(0, 2, tuple(shape), generator=generator, dtype=torch.int8)
    return (v.to(dtype=like.dtype) * 2 - 1).to(like.device)


def _batches(batches: Iterable[Batch], n_batches: int) -> list[Batch]:
    set_epoch = getattr(batches, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(0)
    out = []
    for batch in batches:
        if len(out) >= n_batches:
            break
        out.append(batch)
    if not out:
        raise ConfigError("the sensitivity needs at least one training batch")
    return out


@contextmanager
def _layer_inputs(model: nn.Module, act_layers: Sequence[str], grad: bool) -> Iterator[dict[str, torch.Tensor]]:
    """The input of each of ``act_layers`` in every forward, in eval mode (``grad``: a leaf copy that
    autograd can differentiate to; else detached); the hooks and the model's mode are put back."""
    modules, captured = dict(model.named_modules()), {}

    def hook(name: str):
        def pre(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if not grad:
                captured[name] = inputs[0].detach()
                return None
            x = inputs[0].clone()
            if not x.requires_grad:
                x.requires_grad_(True)
            captured[name] = x
            return (x, *inputs[1:])
        return pre

    was_training = model.training
    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in act_layers]
    try:
        model.eval()
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _probe_quadratics(grads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], probes: int, chunk: int,
                      generator: torch.Generator) -> torch.Tensor:
    """``v^T H v`` per probe (rows) and target (columns) for Rademacher ``v``, ``chunk`` probes per pass."""
    out = torch.zeros(probes, len(targets), dtype=torch.float64)
    for start in range(0, probes, chunk):
        count = min(chunk, probes - start)
        if count == 1:
            vs = [_rademacher(t.shape, generator, t) for t in targets]
            hvs = torch.autograd.grad(grads, targets, grad_outputs=vs, retain_graph=True, allow_unused=True)
            vs, hvs = [v.unsqueeze(0) for v in vs], [None if h is None else h.unsqueeze(0) for h in hvs]
        else:
            vs = [_rademacher((count, *t.shape), generator, t) for t in targets]
            hvs = torch.autograd.grad(grads, targets, grad_outputs=vs, retain_graph=True, allow_unused=True,
                                      is_grads_batched=True)
        for j, (v, h) in enumerate(zip(vs, hvs)):
            if h is not None:
                out[start:start + count, j] = (v * h).reshape(count, -1).sum(1).double().cpu()
    return out


def hutchinson_traces(model: nn.Module, batches: Sequence[Batch], layers: Sequence[str], *, probes: int = 32,
                      act_layers: Sequence[str] = (), seed: int = 0, probe_chunk: int = 1,
                      device: str | torch.device = "cpu") -> dict[str, Any]:
    """Hutchinson estimates of the Hessian traces of the mean cross-entropy over ``batches`` (each
    weighted by its size; eval mode) w.r.t. the weights of ``layers`` and the inputs of
    ``act_layers`` (module docstring). Returns ``{"weights": {name: (mean, se)}, "acts": {name:
    (mean, se)}, "act_elements": {name: int}, "samples": int}``."""
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 2:
        raise ConfigError(f"probes must be an integer >= 2 (the standard error needs two), got {probes!r}")
    if isinstance(probe_chunk, bool) or not isinstance(probe_chunk, int) or probe_chunk < 1:
        raise ConfigError(f"probe_chunk must be an integer >= 1, got {probe_chunk!r}")
    modules = dict(model.named_modules())
    weights = [modules[name].weight for name in layers]
    generator = torch.Generator().manual_seed(int(seed))
    total = sum(int(y.shape[0]) for _, y in batches)
    samples = torch.zeros(probes, len(layers) + len(act_layers), dtype=torch.float64)
    elements = dict.fromkeys(act_layers, 0)
    with _layer_inputs(model, act_layers, grad=True) as captured:
        for x, y in batches:
            captured.clear()
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x).float(), y) * (y.shape[0] / total)
            inputs = [captured[name] for name in act_layers]
            grads = torch.autograd.grad(loss, weights + inputs, create_graph=True)
            for name, t in zip(act_layers, inputs):
                elements[name] += t.numel()
            samples += _probe_quadratics(grads, weights + inputs, probes, probe_chunk, generator)
            del grads, loss

    def stats(col: torch.Tensor) -> tuple[float, float]:
        return float(col.mean()), float(col.std(correction=1) / math.sqrt(probes))

    return {"weights": {name: stats(samples[:, j]) for j, name in enumerate(layers)},
            "acts": {name: stats(samples[:, len(layers) + j]) for j, name in enumerate(act_layers)},
            "act_elements": elements, "samples": total}


# ---- perturbations ------------------------------------------------------------------------------
@torch.no_grad()
def weight_perturbations(model: nn.Module, space: SearchSpace, spec: QuantizerSpec
                         ) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """(perturbation, raw perturbation) per searched layer and weight bits (module docstring)."""
    aligned: dict[str, dict[int, float]] = {name: {} for name in space.searched_names}
    raw: dict[str, dict[int, float]] = {name: {} for name in space.searched_names}
    base = copy.deepcopy(model).cpu().eval()
    for bits in space.bit_choices:
        quantized = copy.deepcopy(base)
        quantize_(quantized, space.to_plan(space.uniform(bits)), spec)
        layers = quantized_layers(quantized)
        for name in space.searched_names:
            layer = layers[name]
            w = layer.weight.detach().double()
            q = layer.effective_weight().detach().double()
            wq = layer.weight_quantizer
            raw[name][bits] = float(((q - w) ** 2).sum())
            if wq is not None and wq.uses_output_scale and wq.scale_mode == "none":
                qq = float((q * q).sum())
                best = float((w * w).sum()) - (float((q * w).sum()) ** 2 / qq if qq > 0 else 0.0)
                aligned[name][bits] = max(best, 0.0)
            else:
                aligned[name][bits] = raw[name][bits]
    return aligned, raw


@torch.no_grad()
def act_perturbations(model: nn.Module, space: SearchSpace, spec: QuantizerSpec, batches: Sequence[Batch],
                      act_layers: Sequence[str], device: str | torch.device = "cpu") -> dict[str, dict[int, float]]:
    """``Σ_b ||Q_a(x_b) - x_b||²`` per layer input and activation bits (module docstring)."""
    if not act_layers:
        return {}
    quantizers = {(name, a): spec.make_act(a, name).to(device).train() for name in act_layers
                  for a in space.act_choices or ()}
    out: dict[str, dict[int, float]] = {name: dict.fromkeys(space.act_choices or (), 0.0) for name in act_layers}
    with _layer_inputs(model, act_layers, grad=False) as inputs:
        for x, y in batches:
            inputs.clear()
            model(x.to(device))
            for (name, a), quantizer in quantizers.items():
                xin = inputs[name].float()
                out[name][a] += float(((quantizer(xin) - xin).double() ** 2).sum())
    return out


# ---- measured loss change -----------------------------------------------------------------------
def _val_loss(model: nn.Module, val: Iterable[Batch], device: str | torch.device) -> float:
    total, loss = 0, 0.0
    with torch.no_grad():
        for x, y in val:
            x, y = x.to(device), y.to(device)
            loss += float(F.cross_entropy(model(x).float(), y, reduction="sum"))
            total += int(y.numel())
    if not total:
        raise ConfigError("the measured loss change needs at least one validation batch")
    return loss / total


def _one_layer(model: nn.Module, name: str, bits: LayerBits, spec: QuantizerSpec, calibrate: Batch | None,
               val: Iterable[Batch], device: str | torch.device) -> float:
    """Validation loss with only ``name`` quantized at ``bits`` (activation quantizers calibrated in
    training mode on one batch first, the rest of the model in eval mode)."""
    quantized = copy.deepcopy(model)
    plan = Plan(default=LayerBits(FLOAT_BITS, FLOAT_BITS), first_last=None,
                entries=(PlanEntry(name, bits.weight, bits.act),))
    quantize_(quantized, plan, spec)
    quantized.to(device).eval()
    layer = quantized_layers(quantized)[name]
    if layer.input_quantizer is not None and calibrate is not None:
        layer.input_quantizer.train()
        with torch.no_grad():
            quantized(calibrate[0].to(device))
        layer.input_quantizer.eval()
    return _val_loss(quantized, val, device)


def measured_loss_deltas(model: nn.Module, space: SearchSpace, spec: QuantizerSpec, val: Iterable[Batch],
                         act_layers: Sequence[str] = (), calibrate: Batch | None = None,
                         device: str | torch.device = "cpu"
                         ) -> tuple[float, dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """(float validation loss, weight deltas, input deltas): one layer at a time (module docstring)."""
    model = copy.deepcopy(model).to(device).eval()
    base = _val_loss(model, val, device)
    weights = {name: {b: _one_layer(model, name, LayerBits(b, FLOAT_BITS), spec, None, val, device) - base
                      for b in space.bit_choices} for name in space.searched_names}
    acts = {name: {a: _one_layer(model, name, LayerBits(FLOAT_BITS, a), spec, calibrate, val, device) - base
                   for a in space.act_choices or ()} for name in act_layers}
    return base, weights, acts


# ---- all of it ----------------------------------------------------------------------------------
def settings_of(space: SearchSpace, spec: QuantizerSpec, probes: int, n_batches: int, seed: int,
                measure_loss: bool) -> dict[str, Any]:
    return {"probes": probes, "batches": n_batches, "seed": seed, "quantizer": asdict(spec),
            "space": space.to_dict(), "measure_loss": measure_loss, "mode": "eval",
            "estimator": "Hutchinson, Rademacher probes, one draw per batch and probe; se = std / sqrt(probes)"}


def layer_sensitivity(model: nn.Module, space: SearchSpace, spec: QuantizerSpec | str, train: Iterable[Batch], *,
                      probes: int = 32, n_batches: int = 2, seed: int = 0, val: Iterable[Batch] | None = None,
                      probe_chunk: int = 1, device: str | torch.device = "cpu") -> Sensitivity:
    """Every searched layer's Hessian trace, perturbations and (with ``val``) measured loss changes
    on the float ``model`` (module docstring). ``train``: training batches (the first ``n_batches``
    of epoch 0 are used)."""
    t0 = time.perf_counter()
    spec = QuantizerSpec(spec) if isinstance(spec, str) else spec
    if quantized_layers(model):
        raise ConfigError("the sensitivity is measured on the float model (it has quantized layers)")
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
        raise ConfigError(f"n_batches must be an integer >= 1, got {n_batches!r}")
    missing = [n for n in space.layer_names if n not in quantizable_layers(model)]
    if missing:
        raise ConfigError(f"the model has no quantizable layer {missing[0]!r} of the search space")
    batches = _batches(train, n_batches)
    acts = [name for name in space.searched_names if space.act_searched(name)]
    model = model.to(device)
    traces = hutchinson_traces(model, batches, space.searched_names, probes=probes, act_layers=acts, seed=seed,
                               probe_chunk=probe_chunk, device=device)
    aligned, raw = weight_perturbations(model, space, spec)
    act_pert = act_perturbations(model, space, spec, batches, acts, device)
    loss_float, deltas, act_deltas = (None, {}, {})
    if val is not None:
        loss_float, deltas, act_deltas = measured_loss_deltas(model, space, spec, val, acts, batches[0], device)
    counts = {layer.name: layer.params for layer in space.layers}
    layers = {}
    for name in space.searched_names:
        trace, se = traces["weights"][name]
        act = traces["acts"].get(name)
        layers[name] = LayerSensitivity(
            name, counts[name], trace, se, aligned[name], raw[name],
            act_trace=None if act is None else act[0], act_trace_se=None if act is None else act[1],
            act_elements=traces["act_elements"].get(name), act_perturbation=act_pert.get(name),
            loss_delta=deltas.get(name), act_loss_delta=act_deltas.get(name))
    settings = settings_of(space, spec, probes, n_batches, seed, val is not None)
    settings["batches_used"], settings["samples"] = len(batches), traces["samples"]
    return Sensitivity(layers, settings, weights_fingerprint(model), loss_float, time.perf_counter() - t0)


def load_or_compute(path: str | Path, model: nn.Module, space: SearchSpace, spec: QuantizerSpec | str,
                    train: Iterable[Batch], *, probes: int = 32, n_batches: int = 2, seed: int = 0,
                    val: Iterable[Batch] | None = None, device: str | torch.device = "cpu",
                    log: Any = None) -> Sensitivity:
    """The sensitivity saved at ``path`` when it was measured on these float weights with these
    settings, else measured now and saved there."""
    spec = QuantizerSpec(spec) if isinstance(spec, str) else spec
    path = Path(path)
    expected = json.loads(json.dumps(settings_of(space, spec, probes, n_batches, seed, val is not None)))
    if path.exists():
        saved = Sensitivity.load(path)
        same = {k: saved.settings.get(k) for k in expected} == expected
        if saved.fingerprint == weights_fingerprint(model) and same:
            if log is not None:
                log(f"sensitivity reused from {path}")
            return saved
        if log is not None:
            log(f"{path} was measured on other weights or settings: measuring again")
    result = layer_sensitivity(model, space, spec, train, probes=probes, n_batches=n_batches, seed=seed, val=val,
                               device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.save(path)
    return result
