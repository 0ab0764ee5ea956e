"""Per-layer sensitivity (issue 19, lowbit.search.sensitivity): Hutchinson traces against the exact
Hessian trace, the quantization perturbations, the measured loss changes and the cached JSON."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lowbit.errors import ConfigError
from lowbit.nn.convert import quantize_, quantized_layers
from lowbit.quant.registry import QuantizerSpec
from lowbit.search import SearchSpace
from lowbit.search import sensitivity as sens
from lowbit.search.sensitivity import Sensitivity, hutchinson_traces, layer_sensitivity, load_or_compute


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(n: int = 2, size: int = 8, features: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size + i, features, generator=g), torch.randint(0, 3, (size + i,), generator=g))
            for i in range(n)]  # unequal sizes: the batches are weighted by their sizes


def _total_loss(model: nn.Module, batches, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    total = sum(y.shape[0] for _, y in batches)
    loss = 0.0
    for x, y in batches:
        out = model(x) if params is None else functional_call(model, params, (x,))
        loss = loss + F.cross_entropy(out, y) * (y.shape[0] / total)
    return loss


def _exact_weight_trace(model: nn.Module, batches, name: str) -> float:
    weight = dict(model.named_parameters())[f"{name}.weight"].detach()

    def f(w: torch.Tensor) -> torch.Tensor:
        return _total_loss(model, batches, {f"{name}.weight": w})

    h = torch.autograd.functional.hessian(f, weight)
    return float(h.reshape(weight.numel(), weight.numel()).diagonal().sum())


def _exact_input_trace(model: nn.Sequential, batches, index: int) -> float:
    """Trace of the Hessian of the total loss w.r.t. the input of ``model[index]`` on every batch."""
    total = sum(y.shape[0] for _, y in batches)
    head, tail = model[:index], model[index:]
    trace = 0.0
    for x, y in batches:
        h0 = head(x).detach()

        def f(h: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(tail(h), y) * (y.shape[0] / total)

        hess = torch.autograd.functional.hessian(f, h0)
        trace += float(hess.reshape(h0.numel(), h0.numel()).diagonal().sum())
    return trace


@pytest.mark.parametrize("chunk", [1, 16])
def test_hutchinson_matches_the_exact_trace(chunk: int) -> None:
    model, batches = _tiny(), _batches()
    probes = 600
    est = hutchinson_traces(model, batches, ["0", "2", "4"], probes=probes, act_layers=["2", "4"], seed=3,
                            probe_chunk=chunk)
    for name in ("0", "2", "4"):
        exact = _exact_weight_trace(model, batches, name)
        mean, se = est["weights"][name]
        assert se > 0
        assert abs(mean - exact) <= 4 * se, (name, mean, exact, se)
    for name, index in (("2", 2), ("4", 4)):
        exact = _exact_input_trace(model, batches, index)
        mean, se = est["acts"][name]
        assert abs(mean - exact) <= 4 * se, (name, mean, exact, se)
    assert est["act_elements"] == {"2": 6 * (8 + 9), "4": 5 * (8 + 9)} and est["samples"] == 17


def test_probes_are_checked() -> None:
    with pytest.raises(ConfigError, match="probes"):
        hutchinson_traces(_tiny(), _batches(), ["0"], probes=1)


def _bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 10))


def _image_batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_perturbations_use_the_search_quantizer() -> None:
    model = _bn_model()
    space = SearchSpace.from_model(model, (2, 4, 8), pin_first_last=False)
    spec = QuantizerSpec("dorefa")  # scale auto: none behind the batch norms, max for the linears
    aligned, raw = sens.weight_perturbations(model, space, spec)
    for bits in space.bit_choices:
        q = copy.deepcopy(model)
        quantize_(q, space.to_plan(space.uniform(bits)), spec)
        layers = quantized_layers(q)
        for name in space.searched_names:
            w, qw = layers[name].weight.detach().double(), layers[name].effective_weight().detach().double()
            assert raw[name][bits] == pytest.approx(float(((qw - w) ** 2).sum()), rel=1e-9)
            if layers[name].weight_quantizer.scale_mode == "none":  # behind a norm: the best per-tensor rescaling
                c = float((qw * w).sum() / (qw * qw).sum())
                assert aligned[name][bits] == pytest.approx(float(((c * qw - w) ** 2).sum()), rel=1e-6, abs=1e-12)
                assert aligned[name][bits] <= raw[name][bits]
            else:
                assert aligned[name][bits] == raw[name][bits]
    assert {n for n in space.searched_names if quantized_layers(_quantized(model, space, spec))[n]
            .weight_quantizer.scale_mode == "none"} == {"0", "3"}
    for name in space.searched_names:  # more bits, less perturbation (DoReFa at 2, 4, 8 bits)
        assert aligned[name][2] > aligned[name][4] > aligned[name][8]


def _quantized(model: nn.Module, space: SearchSpace, spec: QuantizerSpec) -> nn.Module:
    q = copy.deepcopy(model)
    quantize_(q, space.to_plan(space.uniform(4)), spec)
    return q


def test_layer_sensitivity_with_activations_and_measured_loss() -> None:
    model = _bn_model()
    space = SearchSpace.from_model(model, (2, 4, 8), pin_first_last=False, search_acts=True, act_choices=(4, 8))
    result = layer_sensitivity(model, space, "pact", _image_batches(), probes=4, n_batches=2, seed=0,
                               val=_image_batches(1))
    assert set(result.layers) == set(space.searched_names)
    first = result.layers["0"]
    assert first.act_trace is None and first.act_perturbation is None  # the network input is never searched
    assert result.act_omega("0", 8) == 0.0
    for name in ("3", "7", "9"):
        layer = result.layers[name]
        assert layer.act_elements > 0 and set(layer.act_perturbation) == {4, 8}
        assert layer.act_perturbation[4] >= layer.act_perturbation[8] >= 0
        assert set(layer.act_loss_delta) == {4, 8}
    for name, layer in result.layers.items():
        assert set(layer.perturbation) == {2, 4, 8} and set(layer.loss_delta) == {2, 4, 8}
        assert result.omega(name, 2) == pytest.approx(0.5 * layer.trace / layer.params * layer.perturbation[2])
    assert result.loss_float is not None and result.settings["probes"] == 4 and result.settings["samples"] == 16
    assert not model.training or all(m.training for m in model.modules())  # the mode is restored
    again = Sensitivity.from_dict(result.to_dict())
    assert again.to_dict() == result.to_dict()


def test_cached_in_the_search_folder_and_reused(tmp_path, monkeypatch) -> None:
    model, batches = _bn_model(), _image_batches()
    space = SearchSpace.from_model(model, (2, 4, 8))
    path = tmp_path / "sensitivity.json"
    first = load_or_compute(path, model, space, "dorefa", batches, probes=3, n_batches=1)
    assert path.exists()

    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(sens, "layer_sensitivity", fail)
    reused = load_or_compute(path, model, space, "dorefa", batches, probes=3, n_batches=1)
    assert reused.to_dict() == first.to_dict()
    monkeypatch.undo()
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[0].weight.add_(0.01)  # other float weights: measured again
    other = load_or_compute(path, changed, space, "dorefa", batches, probes=3, n_batches=1)
    assert other.fingerprint != first.fingerprint
    more = load_or_compute(path, changed, space, "dorefa", batches, probes=5, n_batches=1)  # other settings
    assert more.settings["probes"] == 5 and Sensitivity.load(path).settings["probes"] == 5
