"""The packed file (lowbit.export.packed): exact weights for every quantizer, size, header, corruption."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from torch import nn

import lowbit.export.packed as packed_module
from lowbit.costs import model_costs
from lowbit.export import ExportError, PackedModel, load_packed, pack_model, read_packed
from lowbit.export.grids import same_values
from lowbit.nn import QuantLayer, quantize_, quantized_layers
from lowbit.plan import Plan
from lowbit.quant import DoReFaWeight, QuantizerSpec
from lowbit.quant.registry import FAMILIES
from lowbit.quant.ste import round_ste
from lowbit.runs.build import ModelArgs

LENET = ModelArgs("lenet5", 10, 1, 28, 0.5)
RESNET = ModelArgs("resnet20", 10, 3, 12, 0.25)


def quantized(args: ModelArgs, family: str, plan: Plan, scale: str = "auto", seed: int = 0):
    """A quantized model with perturbed learned scales/steps and batch-norm statistics from random data."""
    torch.manual_seed(seed)
    model = args.build()
    spec = QuantizerSpec(family, scale=scale)
    quantize_(model, plan, spec)
    with torch.no_grad():
        for layer in quantized_layers(model).values():
            for p in (layer.weight_quantizer.parameters() if layer.weight_quantizer is not None else []):
                p.mul_(torch.empty(()).uniform_(0.5, 1.5))  # learned scale / LSQ step away from its init
        model.train()
        for _ in range(2):
            model(torch.randn(16, args.in_channels, args.input_size, args.input_size))
    return model.eval(), spec


def round_trip(model, args, spec, plan) -> PackedModel:
    return PackedModel.from_bytes(pack_model(model, args, spec, plan).to_bytes())


def inputs(args: ModelArgs, n: int = 8) -> torch.Tensor:
    return torch.randn(n, args.in_channels, args.input_size, args.input_size, generator=torch.Generator().manual_seed(1))


CASES = [(f, k) for f in sorted(FAMILIES) for k in range(1, 9) if k in FAMILIES[f].weight.supported_bits]


@pytest.mark.parametrize("family,bits", CASES)
def test_loaded_weights_equal_fake_quant_weights_exactly(family: str, bits: int) -> None:
    scale = ("auto", "learned", "none")[bits % 3]  # every output-scale mode is covered across the bits
    plan = Plan.uniform(bits, bits, keep_first_last=False)
    model, spec = quantized(LENET, family, plan, scale, seed=bits)
    packed = round_trip(model, LENET, spec, plan)
    assert all(enc.table is None for enc in packed.weights.values())  # the rules are exact: no level tables
    plain = packed.float_module()
    assert not any(isinstance(m, QuantLayer) for m in plain.modules())  # a plain float nn.Module
    for name, layer in quantized_layers(model).items():
        assert same_values(plain.get_submodule(name).weight, layer.effective_weight()), name
    x = inputs(LENET)
    with torch.no_grad():
        assert torch.equal(packed.float_module(activations=True)(x), model(x))
        if family == "dorefa" and bits == 8:  # the plain module computes with float activations
            assert not torch.equal(plain(x), model(x))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exact_on_a_network_with_batch_norm(family: str) -> None:
    plan = Plan.uniform(3, 4).with_entries(*Plan.from_layer_bits({"layer2_0.conv1": 2, "layer3_2.conv2": 5}).entries)
    model, spec = quantized(RESNET, family, plan)
    packed = round_trip(model, RESNET, spec, plan)
    for name, layer in quantized_layers(model).items():
        if layer.weight_quantizer is not None:
            assert same_values(packed.weights[f"{name}.weight"].dequantize(), layer.effective_weight()), name
    x = inputs(RESNET)
    with torch.no_grad():
        assert torch.equal(packed.float_module(activations=True)(x), model(x))


class ReorderedDoReFa(DoReFaWeight):
    """DoReFa's levels computed in another float order: the rule is not bit-exact, the table must be used."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.output_scale(w)
        u, _ = self._unit(w / s)
        n = 2**self.bits - 1
        return s * ((2.0 * round_ste((u + 1.0) / 2.0 * n) - n) / n)


class NotQuantized(DoReFaWeight):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * 1.0


def _swap_quantizer(model: nn.Module, name: str, cls: type) -> None:
    layer = model.get_submodule(name)
    layer.weight_quantizer = cls(layer.weight_bits, layer.weight, name, "max")


def test_level_table_when_the_rule_is_not_exact() -> None:
    plan = Plan.uniform(5, 32, keep_first_last=False)
    model, spec = quantized(LENET, "dorefa", plan)
    _swap_quantizer(model, "fc3", ReorderedDoReFa)
    packed = round_trip(model, LENET, spec, plan)
    assert packed.weights["fc3.weight"].table is not None and packed.weights["fc4.weight"].table is None
    assert packed.sizes()["tables"] == 4 * 32
    assert same_values(packed.float_module().fc3.weight, model.fc3.effective_weight())


def test_weights_off_the_grid_are_refused() -> None:
    plan = Plan.uniform(2, 32, keep_first_last=False)
    model, spec = quantized(LENET, "dorefa", plan)
    _swap_quantizer(model, "fc4", NotQuantized)
    with pytest.raises(ExportError, match="fc4.weight.*not on a 2-bit grid"):
        pack_model(model, LENET, spec, plan)
    with torch.no_grad():
        model.fc4.weight[0, 0] = float("nan")
    _swap_quantizer(model, "fc4", DoReFaWeight)
    with pytest.raises(ExportError, match="NaN"):
        pack_model(model, LENET, spec, plan)


def test_file_size_tracks_the_bits_and_the_floor() -> None:
    args = ModelArgs("lenet5", 10, 1, 28, 1.0)
    plan = Plan.uniform(2)
    model, spec = quantized(args, "dorefa", plan)
    raw = pack_model(model, args, spec, plan).to_bytes()
    header = 8 + int.from_bytes(raw[:8], "little")
    layers = quantized_layers(model)
    params_bits = sum(math.ceil(m.weight.numel() * m.weight_bits / 8) for m in layers.values())
    floats = sum(4 * t.numel() for k, t in model.state_dict().items()
                 if t.is_floating_point() and not (k.endswith(".weight") and k[:-7] in layers))
    assert abs((len(raw) - header) - (params_bits + floats)) <= 0.01 * (params_bits + floats)
    assert len(raw) - header == params_bits + floats  # exactly: nothing but codes and float32 tensors
    packed = PackedModel.from_bytes(raw)
    assert packed.sizes()["floor"] == model_costs(model).size_bytes  # the same floor as result.json's size_bytes
    assert packed.sizes()["float32"] == model_costs(model).float_size_bytes
    assert len(raw) < model_costs(model).float_size_bytes / 10


def test_header_records_model_plan_quantizer_and_digest(tmp_path) -> None:
    plan = Plan.uniform(3, 4)
    model, spec = quantized(LENET, "pact", plan)
    path = tmp_path / "m.safetensors"
    pack_model(model, LENET, spec, plan).save(path)
    raw = path.read_bytes()
    with safetensors.safe_open(str(path), "pt") as handle:  # an ordinary safetensors file
        meta = handle.metadata()
        assert handle.get_tensor("fc3.weight").dtype == torch.uint8
        assert handle.get_tensor("fc3.input_quantizer.alpha").dtype == torch.float32
    head = json.loads(meta["lowbit"])
    assert (head["format"], head["version"], head["bit_order"]) == ("lowbit-packed", 1, "lsb-first")
    assert head["model"] == LENET.to_dict() and head["plan"] == plan.to_dict() and head["quantizer"] == spec.to_dict()
    assert head["weights"]["fc3.weight"]["bits"] == 3 and head["weights"]["fc3.weight"]["shape"] == [60, 200]
    assert head["acts"]["fc3"] == {"bits": 4, "kind": "pact", "param": "fc3.input_quantizer.alpha"}
    digest = meta["lowbit_sha256"]
    assert hashlib.sha256(raw.replace(digest.encode(), b"0" * 64)).hexdigest() == digest
    loaded = load_packed(path)
    assert isinstance(loaded, nn.Module) and not loaded.training


def test_truncated_or_altered_files_give_a_clear_error(tmp_path) -> None:
    args = ModelArgs("lenet5", 10, 1, 12, 0.25)
    plan = Plan.uniform(2, 2)
    model, spec = quantized(args, "lsq", plan)
    raw = pack_model(model, args, spec, plan).to_bytes()
    PackedModel.from_bytes(raw)
    for length in range(len(raw)):  # every truncation
        with pytest.raises(ExportError, match="truncated|not a lowbit packed file|corrupt"):
            PackedModel.from_bytes(raw[:length])
    for position in range(len(raw)):  # every single flipped byte, header and data alike
        for mask in (0x01, 0x80):
            altered = bytearray(raw)
            altered[position] ^= mask
            with pytest.raises(ExportError):
                PackedModel.from_bytes(bytes(altered))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:-10])
    with pytest.raises(ExportError, match="cut.safetensors is corrupt or truncated"):
        read_packed(path)
    with pytest.raises(ExportError, match="not found"):
        read_packed(tmp_path / "missing.safetensors")
    with pytest.raises(ExportError, match="folder"):
        read_packed(tmp_path)


def test_foreign_newer_or_mismatched_files(tmp_path, monkeypatch) -> None:
    plan = Plan.uniform(2)
    model, spec = quantized(LENET, "dorefa", plan)
    foreign = safetensors.torch.save({"w": torch.zeros(3)}, metadata={"lowbit": "{}"})
    with pytest.raises(ExportError, match="not a lowbit packed file"):
        PackedModel.from_bytes(foreign)
    with pytest.raises(ExportError, match="not a lowbit packed file"):
        PackedModel.from_bytes(b"PK\x03\x04 a zip file, say")
    packed = pack_model(model, LENET, spec, plan)
    monkeypatch.setattr(packed_module, "VERSION", 2)
    newer = packed.to_bytes()
    monkeypatch.undo()
    with pytest.raises(ExportError, match="unsupported packed format version 2"):
        PackedModel.from_bytes(newer)
    packed.args = ModelArgs("lenet5", 10, 1, 28, 1.0)  # a consistent file describing another model
    reread = PackedModel.from_bytes(packed.to_bytes())
    with pytest.raises(ExportError, match="do not fit model 'lenet5'"):
        reread.float_module()


def test_loading_needs_no_quantization_or_training_code(tmp_path) -> None:
    plan = Plan.uniform(2, 2)
    model, spec = quantized(LENET, "lsq", plan)
    path = tmp_path / "m.safetensors"
    pack_model(model, LENET, spec, plan).save(path)
    code = ("import sys, torch; from lowbit.export import load_packed; m = load_packed(sys.argv[1]); "
            "m(torch.zeros(1, 1, 28, 28)); print(sorted(k for k in sys.modules if k in ('lowbit.nn', 'lowbit.train')))")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
