"""The packed model file: low-bit weights at their own bit width, in a safetensors container.

File layout (format ``lowbit-packed``, version 1). A standard safetensors file (no pickle): an
8-byte little-endian header length, a JSON header, then the raw tensor bytes. Tensors:

- every quantized weight, under its float state-dict key (``conv2.weight``): dtype U8, shape
  ``[ceil(numel * bits / 8)]``, the codes packed LSB first as documented in
  :mod:`lowbit.export.pack`;
- ``levels:<key>`` (F32, ``[2**bits]``): only for a weight whose rule is not bit-exact (never for
  lowbit's own quantizers; see :mod:`lowbit.export.grids`);
- every other floating-point tensor of the float model (biases, float layers, batch norm
  weights and running statistics) and the activation quantizers' parameters
  (``conv2.input_quantizer.alpha`` for PACT, ``...step`` for LSQ) as F32. Integer buffers
  (batch norm's ``num_batches_tracked``) are not stored: a loaded model has them at 0.

The safetensors metadata holds two strings. ``lowbit``: the JSON header, with ``format``,
``version``, ``bit_order`` (``lsb-first``), ``model`` (``ModelArgs.to_dict()``: name and
constructor arguments), ``quantizer`` (the ``QuantizerSpec``), ``plan`` (the ``Plan``), ``layers``
(every quantizable layer's ``weight_bits``/``act_bits``), ``weights`` (per packed tensor: ``shape``,
``bits``, ``rule``, ``scale``, ``divisor``, ``code_mult``, ``zero_point``, ``table``) and ``acts``
(per layer with quantized input: ``bits``, ``kind``, ``param``). ``lowbit_sha256``: the SHA-256
(hex) of the whole file as written with these 64 digits replaced by ``0`` characters, so a
change to any byte (header or data) or a truncation is detected before anything is parsed.

``read_packed(path).float_module()`` gives a plain float ``nn.Module`` (``ModelArgs.build()``
plus a float state dict) whose weights equal the fake-quantized weights exactly; it computes
with float activations. This path needs the model zoo, not lowbit's quantization or training
code (``lowbit.nn`` and ``lowbit.train`` are not imported). ``float_module(activations=True)``
re-applies ``lowbit.nn.quantize_`` with float (baked) weights and the recorded activation
quantizers and their parameters, so its outputs equal the fake-quant model's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from lowbit import __version__
from lowbit.errors import LowbitError
from lowbit.export.errors import ExportError
from lowbit.export.grids import ActGrid, EncodedWeight, WeightGrid, act_grid, encode_weight
from lowbit.export.pack import pack_codes, packed_nbytes, unpack_codes
from lowbit.io import atomic_write_bytes
from lowbit.plan import LayerBits, Plan
from lowbit.quant.bits import FLOAT_BITS
from lowbit.quant.registry import QuantizerSpec
from lowbit.runs.build import ModelArgs

FORMAT = "lowbit-packed"
VERSION = 1
HEADER_KEY = "lowbit"
DIGEST_KEY = "lowbit_sha256"
TABLE_PREFIX = "levels:"
_BLANK_DIGEST = "0" * 64
_DIGEST_RE = re.compile(rb'"' + DIGEST_KEY.encode() + rb'"\s*:\s*"([0-9a-f]{64})"')


@dataclass
class PackedModel:
    """A quantized model as stored: codes per quantized weight, float32 for everything else."""

    args: ModelArgs
    spec: QuantizerSpec | None
    plan: Plan | None
    layers: dict[str, LayerBits]  # every quantizable layer, in order
    weights: dict[str, EncodedWeight]  # state key -> codes
    acts: dict[str, ActGrid]  # layer name -> grid of the activations entering it
    act_params: dict[str, str]  # layer name -> state key of its activation parameter (pact/lsq)
    floats: dict[str, torch.Tensor]  # every other float tensor by state key (act parameters too)
    file_bytes: int | None = field(default=None, compare=False)

    # ---- models ------------------------------------------------------------------------
    def float_state(self) -> dict[str, torch.Tensor]:
        """The float model's floating-point tensors: dequantized weights and the stored floats."""
        params = set(self.act_params.values())
        state = {key: enc.dequantize() for key, enc in self.weights.items()}
        state.update({key: t for key, t in self.floats.items() if key not in params})
        return state

    def float_module(self, activations: bool = False) -> nn.Module:
        """A float ``nn.Module`` computing with the exact fake-quantized weights (eval mode).

        ``activations=False``: a plain float model (float activations everywhere).
        ``activations=True``: the recorded activation quantizers are applied again (weights stay
        float), so the outputs equal the fake-quant model's.
        """
        try:
            model = self.args.build()
        except LowbitError as exc:
            raise ExportError(f"cannot rebuild model {self.args.name!r}: {exc}") from None
        wanted = model.state_dict()
        given = self.float_state()
        unknown = sorted(set(given) - set(wanted))
        missing = sorted(k for k, v in wanted.items() if k not in given and v.is_floating_point())
        if unknown or missing:
            detail = f"unexpected tensors {unknown[:3]}" if unknown else f"missing tensors {missing[:3]}"
            raise ExportError(f"stored tensors do not fit model {self.args.name!r}: {detail}")
        state = {k: given.get(k, v) for k, v in wanted.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ExportError(f"stored tensors do not fit model {self.args.name!r}: {exc}") from None
        if activations and self.acts:
            from lowbit.nn import quantize_, quantized_layers

            plan = Plan.from_layer_bits({name: LayerBits(FLOAT_BITS, grid.bits) for name, grid in self.acts.items()})
            quantize_(model, plan, self.spec or QuantizerSpec())
            with torch.no_grad():
                for name, layer in quantized_layers(model).items():
                    if layer.input_quantizer.grid_param is not None:
                        layer.input_quantizer.restore_grid_param(self.floats[self.act_params[name]])
        return model.eval()

    # ---- sizes -------------------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        """Byte counts: packed codes, level tables, float tensors, the floor (``costs.size_bytes``'s
        definition: packed codes + one float32 scale per packed tensor + float tensors), the float32
        model, and the file and its header when known."""
        codes = sum(packed_nbytes(e.codes.numel(), e.grid.bits) for e in self.weights.values())
        tables = sum(4 * e.table.numel() for e in self.weights.values() if e.table is not None)
        floats = sum(4 * t.numel() for t in self.floats.values())
        weights = sum(e.codes.numel() for e in self.weights.values())
        out = {"codes": codes, "tables": tables, "floats": floats, "floor": codes + 4 * len(self.weights) + floats,
               "float32": 4 * (weights + sum(t.numel() for t in self.floats.values()))}
        if self.file_bytes is not None:
            out["file"] = self.file_bytes
            out["header"] = self.file_bytes - codes - tables - floats
        return out

    # ---- files -------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        weights = {}
        for key, enc in self.weights.items():
            weights[key] = {**enc.grid.to_dict(), "shape": list(enc.shape),
                            "table": TABLE_PREFIX + key if enc.table is not None else None}
        return {
            "format": FORMAT, "version": VERSION, "bit_order": "lsb-first", "lowbit_version": __version__,
            "model": self.args.to_dict(),
            "quantizer": self.spec.to_dict() if self.spec else None,
            "plan": self.plan.to_dict() if self.plan else None,
            "layers": {name: {"weight_bits": b.weight, "act_bits": b.act} for name, b in self.layers.items()},
            "weights": weights,
            "acts": {name: {**grid.to_dict(), "param": self.act_params.get(name)} for name, grid in self.acts.items()},
        }

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {}
        for key, enc in self.weights.items():
            tensors[key] = torch.from_numpy(pack_codes(enc.codes, enc.grid.bits))
            if enc.table is not None:
                tensors[TABLE_PREFIX + key] = enc.table.float().contiguous().clone()
        for key, t in self.floats.items():
            tensors[key] = t.detach().float().contiguous().clone()
        meta = {HEADER_KEY: json.dumps(self.header(), separators=(",", ":")), DIGEST_KEY: _BLANK_DIGEST}
        raw = st_save(tensors, metadata=meta)
        found = _find_digest(raw)
        assert found is not None and found.group(1) == _BLANK_DIGEST.encode()
        digest = hashlib.sha256(raw).hexdigest().encode()
        start = 8 + found.start(1)
        return raw[:start] + digest + raw[start + 64:]

    def save(self, path: str | Path) -> int:
        """Write the packed file atomically; return its size in bytes."""
        raw = self.to_bytes()
        atomic_write_bytes(Path(path), raw)
        self.file_bytes = len(raw)
        return len(raw)

    @classmethod
    def from_bytes(cls, raw: bytes, source: str = "<bytes>") -> PackedModel:
        head = _verified_header(raw, source)
        try:
            tensors = st_load(raw)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise ExportError(f"{source}: unreadable tensor data ({exc})") from None
        try:
            packed = _parse(head, tensors)
        except LowbitError as exc:
            raise ExportError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ExportError(f"{source}: invalid lowbit header ({type(exc).__name__}: {exc})") from None
        packed.file_bytes = len(raw)
        return packed


def _find_digest(raw: bytes) -> re.Match | None:
    length = int.from_bytes(raw[:8], "little")
    found = list(_DIGEST_RE.finditer(raw[8:8 + length]))
    return found[0] if len(found) == 1 else None


def _verified_header(raw: bytes, source: str) -> dict[str, Any]:
    """Check length, digest and format of a packed file; return its lowbit header."""
    if len(raw) < 8:
        raise ExportError(f"{source}: not a lowbit packed file ({len(raw)} bytes; truncated?)")
    length = int.from_bytes(raw[:8], "little")
    if not 2 <= length <= len(raw) - 8:
        raise ExportError(f"{source}: not a lowbit packed file, or truncated (header length {length} "
                          f"does not fit a {len(raw)}-byte file)")
    found = _find_digest(raw)
    if found is None:
        raise ExportError(f"{source}: not a lowbit packed file, or its header is corrupt (no {DIGEST_KEY} digest)")
    start = 8 + found.start(1)
    blank = raw[:start] + _BLANK_DIGEST.encode() + raw[start + 64:]
    if hashlib.sha256(blank).hexdigest().encode() != found.group(1):
        raise ExportError(f"{source} is corrupt or truncated (SHA-256 mismatch); it cannot be used")
    try:
        outer = json.loads(raw[8:8 + length])
        head = json.loads(outer["__metadata__"][HEADER_KEY])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ExportError(f"{source}: invalid header ({exc})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        found = head.get("format") if isinstance(head, dict) else None
        raise ExportError(f"{source}: not a lowbit packed file (format {found!r})")
    if head.get("version") != VERSION:
        raise ExportError(f"{source}: unsupported packed format version {head.get('version')!r} "
                          f"(this lowbit reads version {VERSION})")
    return head


def _parse(head: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PackedModel:
    args = ModelArgs.from_dict(head["model"])
    spec = QuantizerSpec.from_dict(head["quantizer"]) if head.get("quantizer") else None
    plan = Plan.from_dict(head["plan"]) if head.get("plan") else None
    layers = {str(n): LayerBits(int(b["weight_bits"]), int(b["act_bits"])) for n, b in head["layers"].items()}
    used = set()
    weights = {}
    for key, desc in head["weights"].items():
        grid = WeightGrid.from_dict(desc)
        shape = tuple(int(s) for s in desc["shape"])
        data = tensors.get(key)
        if data is None or data.dtype != torch.uint8 or data.dim() != 1:
            raise ExportError(f"packed weight {key!r} is missing or not a 1-d uint8 tensor")
        codes = torch.from_numpy(unpack_codes(data.numpy(), grid.bits, int(np.prod(shape, dtype=np.int64))))
        table = None
        if desc.get("table") is not None:
            table = tensors.get(desc["table"])
            if table is None or table.dtype != torch.float32 or tuple(table.shape) != (1 << grid.bits,):
                raise ExportError(f"level table of {key!r} is missing or malformed")
            used.add(desc["table"])
        weights[key] = EncodedWeight(grid, shape, codes, table)
        used.add(key)
    floats = {k: t for k, t in tensors.items() if k not in used}
    bad = [k for k, t in floats.items() if t.dtype != torch.float32]
    if bad:
        raise ExportError(f"tensor {bad[0]!r} should be float32")
    acts, act_params = {}, {}
    for name, desc in head["acts"].items():
        param = desc.get("param")
        value = None
        if param is not None:
            if param not in floats or floats[param].numel() != 1:
                raise ExportError(f"activation parameter {param!r} of layer {name!r} is missing")
            value = float(floats[param].reshape(()))
            act_params[name] = param
        acts[name] = ActGrid(int(desc["bits"]), str(desc["kind"]), value)
    return PackedModel(args, spec, plan, layers, weights, acts, act_params, floats)


# ---- public API ------------------------------------------------------------------------------
@torch.no_grad()
def pack_model(model: nn.Module, args: ModelArgs, spec: QuantizerSpec | None = None,
               plan: Plan | None = None) -> PackedModel:
    """Encode a (quantized) model: codes for every quantized weight, float32 for the rest."""
    from lowbit.nn import layer_bits, quantized_layers

    try:
        skeleton = args.build().state_dict()
    except LowbitError as exc:
        raise ExportError(f"cannot rebuild model {args.name!r}: {exc}") from None
    state = model.state_dict()
    missing = [k for k in skeleton if k not in state]
    if missing:
        raise ExportError(f"the model does not match {args.name!r} built from its arguments (missing {missing[:3]})")
    weights, acts, act_params = {}, {}, {}
    for name, layer in quantized_layers(model).items():
        if layer.weight_quantizer is not None:
            key = f"{name}.weight"
            weights[key] = encode_weight(key, layer.weight_quantizer, layer.weight, layer.effective_weight())
        if layer.input_quantizer is not None:
            acts[name] = act_grid(layer.input_quantizer)
            attr = layer.input_quantizer.grid_param
            if attr is not None:
                act_params[name] = f"{name}.input_quantizer.{attr}"
    floats = OrderedDict((k, state[k].detach().float().clone()) for k, v in skeleton.items()
                         if k not in weights and v.is_floating_point())
    for key in act_params.values():
        floats[key] = state[key].detach().float().clone()
    return PackedModel(args, spec, plan, dict(layer_bits(model)), weights, acts, act_params, dict(floats))


def read_packed(path: str | Path) -> PackedModel:
    """Read and verify a packed file; :class:`ExportError` if it is missing, truncated or altered."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"packed file not found: {path}") from None
    except IsADirectoryError:
        raise ExportError(f"expected a packed file, got a folder: {path}") from None
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    return PackedModel.from_bytes(raw, str(path))


def load_packed(path: str | Path, activations: bool = False) -> nn.Module:
    """The float ``nn.Module`` stored in a packed file (see :meth:`PackedModel.float_module`)."""
    return read_packed(path).float_module(activations)


def is_packed_file(path: str | Path) -> bool:
    """Whether ``path`` looks like a safetensors file carrying a lowbit header (cheap check, no digest)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8 + 4096)
    except OSError:
        return False
    return len(head) > 9 and head[8:9] == b"{" and HEADER_KEY.encode() in head[8:]


def load_source(path: str | Path) -> PackedModel:
    """A packed model from a run folder or model file (packed on the fly) or from a packed file."""
    from lowbit.runs.model_io import load_model  # a run folder: the one format export reads
    from lowbit.train.checkpoint import MAGIC as CHECKPOINT_MAGIC

    path = Path(path)
    if path.is_file() and is_packed_file(path):
        return read_packed(path)
    if path.is_file() and path.read_bytes()[:len(CHECKPOINT_MAGIC)] != CHECKPOINT_MAGIC:
        raise ExportError(f"{path} is neither a run folder, a lowbit model file nor a packed file")
    model, args, spec, plan = load_model(path)
    model.eval()
    return pack_model(model, args, spec, plan)
