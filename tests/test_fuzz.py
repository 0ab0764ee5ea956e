"""Byte-level fuzz of what lowbit parses: plan JSON, YAML config, packed file, checkpoint, search cache.

Each target gets valid seed documents corrupted by truncation (at every offset, exhaustively),
flipped bits, replaced/inserted/deleted bytes (hypothesis, the CI profile of conftest.py) and,
for the checksummed formats, corruption *behind* a recomputed checksum, so that it reaches the
parsers the checksum normally shields. The only exceptions allowed out are lowbit's documented
errors (subclasses of :class:`lowbit.errors.LowbitError`); anything else fails the test.
(Single flips and truncations of a packed file without a valid digest: test_export_packed.py.)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lowbit.cli.config import merge_options, read_yaml
from lowbit.errors import CheckpointError, ConfigError, LowbitError, PlanError
from lowbit.export import ExportError, PackedModel, pack_model
from lowbit.export.packed import DIGEST_KEY, HEADER_KEY, _BLANK_DIGEST, _find_digest
from lowbit.nn import quantize_
from lowbit.plan import Plan
from lowbit.quant import QuantizerSpec
from lowbit.runs.build import ModelArgs
from lowbit.runs.train_run import TrainOptions
from lowbit.search import CachedEvaluator, SyntheticEvaluator
from lowbit.train.checkpoint import FORMAT_VERSION, MAGIC, load_checkpoint, save_checkpoint
from search_support import small_space

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ---- mutations ---------------------------------------------------------------------------------

INTERESTING = [bytes([b]) for b in b'{}[]":,-+0123456789.eE \n\t\\/tfnul!&*#?|>'] + [b"\x00", b"\x80", b"\xff"]
POS = st.integers(0, 1 << 20)
MUTATION = st.one_of(
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("flip"), POS, st.integers(0, 7)),
    st.tuples(st.just("set"), POS, st.sampled_from(INTERESTING)),
    st.tuples(st.just("insert"), POS, st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=6))),
    st.tuples(st.just("delete"), POS, st.integers(1, 12)),
)
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=4)


def mutate(raw: bytes, ops: list[tuple]) -> bytes:
    data = bytearray(raw)
    for op in ops:
        if not data and op[0] != "insert":
            continue
        at = op[1] % (len(data) + (1 if op[0] in ("truncate", "insert") else 0))
        if op[0] == "truncate":
            del data[at:]
        elif op[0] == "flip":
            data[at] ^= 1 << op[2]
        elif op[0] == "set":
            data[at:at + 1] = op[2]
        elif op[0] == "insert":
            data[at:at] = op[2]
        else:
            del data[at:at + op[2]]
    return bytes(data)


def only_lowbit_errors(fn, *args):
    """Call ``fn``; a LowbitError is fine, any other exception fails (it propagates). Returns the outcome."""
    try:
        return fn(*args)
    except LowbitError as exc:
        return exc


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---- plan JSON ---------------------------------------------------------------------------------

LAYERS = ["conv1", "conv2", "fc3", "fc4", "fc5"]
PLAN_SEEDS = [
    json.dumps(Plan.uniform(2, 4).with_entries().to_dict(), indent=2).encode(),
    b'{"format": "lowbit-plan", "version": 1, "default": {"weight": 3, "act": 32}, "first_last": null,\n'
    b' "layers": {"conv1": 8, "fc*": {"weight": 2, "act": 4}, "conv2": {"act": 5}}}\n',
    b'{"format":"lowbit-plan","version":1,"layers":{"fc[34]":{"weight":1},"c?nv2":4}}',
]


def parse_plan(path: Path, raw: bytes):
    path.write_bytes(raw)
    plan = Plan.load(path)
    plan.resolve(LAYERS)
    assert Plan.from_dict(plan.to_dict()) == plan  # whatever is accepted round-trips
    return plan


def test_plan_truncated_at_every_offset(scratch):
    path = scratch / "trunc-plan.json"
    tried = 0
    for seed in PLAN_SEEDS:
        for cut in range(len(seed)):
            outcome = only_lowbit_errors(parse_plan, path, seed[:cut])
            if cut < len(seed.rstrip()):  # no proper prefix of the JSON text is a whole plan
                assert isinstance(outcome, PlanError), (seed[:cut], outcome)
            tried += 1
    assert tried == sum(len(s) for s in PLAN_SEEDS)


@FUZZ
@given(seed=st.sampled_from(PLAN_SEEDS), ops=MUTATIONS)
def test_plan_parser_fuzz(scratch, seed, ops):
    only_lowbit_errors(parse_plan, scratch / "plan.json", mutate(seed, ops))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=6)
    | st.sampled_from([1, 2, 8, 32, 0, 9, -1, 1.0, 2.5, "4", True, "conv1", "*", "", "lowbit-plan"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["weight", "act", "x", "conv1"]),
                                                                 inner, max_size=3),
    max_leaves=6)


@FUZZ
@given(seed=st.sampled_from(PLAN_SEEDS), where=st.lists(st.integers(0, 7), min_size=1, max_size=3), value=JSON_VALUES)
def test_plan_from_dict_with_wrong_types_anywhere(seed, where, value):
    """Structured fuzz: one value anywhere in a valid plan replaced by any JSON value."""
    data = json.loads(seed)
    node = data
    for step in where[:-1]:
        if not isinstance(node, dict) or not node:
            break
        child = node[sorted(node)[step % len(node)]]
        if not isinstance(child, dict):
            break
        node = child
    keys = sorted(node) + ["extra"]
    node[keys[where[-1] % len(keys)]] = value
    plan = only_lowbit_errors(Plan.from_dict, data)
    if isinstance(plan, Plan):
        only_lowbit_errors(plan.resolve, LAYERS)
        assert Plan.from_dict(plan.to_dict()) == plan


# ---- YAML config -------------------------------------------------------------------------------

CONFIG_SEEDS = [
    b"model: lenet5\ndataset: digits\nepochs: 3\nbatch-size: 64\nlr: 0.01\nquantizer: dorefa\nwbits: 2\n"
    b"abits: 4\nseed: 7\nsinreq: 0.001\nsinreq_schedule: warmup\nval_fraction: 0.1\n",
    b"# float run\nmodel: 'simplenet'\nwidth_mult: 1.5\noptimizer: adam\nschedule: step\nweight_decay: 0.0\n"
    b"threads: 2\ntensorboard: false\nout: runs/x\n",
    b"{model: lenet5, epochs: 2, init: null, quantizer: lsq, plan: plan.json}\n",
]


def parse_config(path: Path, raw: bytes):
    path.write_bytes(raw)
    options = merge_options(TrainOptions, [read_yaml(path)])
    options.validate()
    options.train_config(batch_norm=False)
    return options


def test_config_truncated_at_every_offset(scratch):
    path = scratch / "trunc.yaml"
    tried = 0
    for seed in CONFIG_SEEDS:
        for cut in range(len(seed)):
            only_lowbit_errors(parse_config, path, seed[:cut])  # a prefix may well be a valid config
            tried += 1
    assert tried == sum(len(s) for s in CONFIG_SEEDS)


@FUZZ
@given(seed=st.sampled_from(CONFIG_SEEDS), ops=MUTATIONS)
def test_config_parser_fuzz(scratch, seed, ops):
    only_lowbit_errors(parse_config, scratch / "config.yaml", mutate(seed, ops))


@pytest.mark.parametrize("text", [
    "epochs: 2001-02-30\n", "epochs: !!int 0x\n", "lr: !!float abc\n", "tensorboard: !!bool maybe\n",
    "seed: !!timestamp x\n", "lr: " + "9" * 400 + "\n", "epochs: 1\nepochs: 2\n", "[" * 5000 + "\n",
    "epochs: !!set {1, 2}\n", "? [1, 2]\n: 3\n", "model: !!binary aGk=\n", "\x00\n", "lr: .nan\n", "lr: .inf\n",
    "weight_decay: .nan\n", "batch_size: 1.5\n", "out: ''\n",
], ids=lambda t: t[:24])
def test_yaml_values_pyyaml_lets_through_are_config_errors(scratch, text):
    """Found by reading PyYAML's constructors: these raised ValueError, KeyError, AttributeError,
    OverflowError or RecursionError (a traceback), or were accepted (nan/inf learning rates)."""
    path = scratch / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        parse_config(path, path.read_bytes())


# ---- packed file -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed_raw() -> bytes:
    args = ModelArgs("lenet5", 10, 1, 12, 0.25)
    torch.manual_seed(0)
    model = args.build()
    plan, spec = Plan.uniform(2, 3), QuantizerSpec("pact")
    quantize_(model, plan, spec)
    return pack_model(model.eval(), args, spec, plan).to_bytes()


def reseal(tensors: dict[str, torch.Tensor], header: str) -> bytes:
    """A packed file with a *valid* digest around any header and tensors (as to_bytes builds it)."""
    raw = safetensors.torch.save(tensors, metadata={HEADER_KEY: header, DIGEST_KEY: _BLANK_DIGEST})
    found = _find_digest(raw)
    if found is None:  # the mutated header itself spells a digest field: leave the file unsealed
        return raw
    start = 8 + found.start(1)
    return raw[:start] + hashlib.sha256(raw).hexdigest().encode() + raw[start + 64:]


def load_packed_bytes(raw: bytes, activations: bool):
    return PackedModel.from_bytes(raw).float_module(activations)


@FUZZ
@given(ops=MUTATIONS)
def test_packed_loader_fuzz_raw_bytes(packed_raw, ops):
    raw = mutate(packed_raw, ops)
    assume(raw != packed_raw)  # two flips of one bit cancel
    outcome = only_lowbit_errors(load_packed_bytes, raw, False)
    assert isinstance(outcome, ExportError)  # the digest catches every change


@FUZZ
@given(ops=MUTATIONS, activations=st.booleans())
def test_packed_loader_fuzz_behind_a_valid_digest(packed_raw, ops, activations):
    """The lowbit header corrupted byte-wise and the file resealed: _parse and float_module must cope."""
    tensors = safetensors.torch.load(packed_raw)
    meta = json.loads(packed_raw[8:8 + int.from_bytes(packed_raw[:8], "little")])["__metadata__"]
    mutated = mutate(meta[HEADER_KEY].encode(), ops).decode("utf-8", errors="replace")
    only_lowbit_errors(load_packed_bytes, reseal(tensors, mutated), activations)


@FUZZ
@given(key_index=st.integers(0, 100), change=st.sampled_from(["drop", "shorter", "longer", "float64", "int32",
                                                               "empty", "nan"]),
       activations=st.booleans())
def test_packed_loader_with_wrong_tensors_behind_a_valid_digest(packed_raw, key_index, change, activations):
    tensors = safetensors.torch.load(packed_raw)
    meta = json.loads(packed_raw[8:8 + int.from_bytes(packed_raw[:8], "little")])["__metadata__"]
    key = sorted(tensors)[key_index % len(tensors)]
    t = tensors[key]
    if change == "drop":
        del tensors[key]
    elif change == "shorter":
        tensors[key] = t.reshape(-1)[:-1].clone() if t.numel() > 1 else t.reshape(-1)[:0].clone()
    elif change == "longer":
        tensors[key] = torch.cat([t.reshape(-1), t.reshape(-1)[:1]])
    elif change == "float64":
        tensors[key] = t.double()
    elif change == "int32":
        tensors[key] = t.to(torch.int32)
    elif change == "empty":
        tensors[key] = t.reshape(-1)[:0].clone()
    else:
        tensors[key] = torch.full_like(t, float("nan")) if t.is_floating_point() else t
    outcome = only_lowbit_errors(load_packed_bytes, reseal(tensors, meta[HEADER_KEY]), activations)
    if change in ("drop", "float64", "int32"):  # a missing tensor or a wrong dtype is always refused
        assert isinstance(outcome, ExportError), (key, change)


# ---- checkpoint --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_raw(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "c.ckpt"
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    save_checkpoint(path, {"kind": "train-state", "epoch": 1, "model": model.state_dict(),
                           "history": [{"epoch": 0, "loss": 1.5}], "rng": torch.get_rng_state()})
    return path.read_bytes()


def load_checkpoint_bytes(path: Path, raw: bytes):
    path.write_bytes(raw)
    return load_checkpoint(path)


@FUZZ
@given(ops=MUTATIONS)
def test_checkpoint_loader_fuzz_raw_bytes(scratch, checkpoint_raw, ops):
    raw = mutate(checkpoint_raw, ops)
    assume(raw != checkpoint_raw)  # two flips of one bit cancel
    outcome = only_lowbit_errors(load_checkpoint_bytes, scratch / "raw.ckpt", raw)
    assert isinstance(outcome, CheckpointError)


@FUZZ
@given(ops=MUTATIONS)
def test_checkpoint_loader_fuzz_behind_a_valid_checksum(scratch, checkpoint_raw, ops):
    """The torch archive corrupted and the checksum recomputed: torch.load(weights_only) must refuse cleanly."""
    body = mutate(checkpoint_raw[len(MAGIC) + 1 + 32:], ops)
    raw = MAGIC + bytes([FORMAT_VERSION]) + hashlib.sha256(body).digest() + body
    outcome = only_lowbit_errors(load_checkpoint_bytes, scratch / "sealed.ckpt", raw)
    assert isinstance(outcome, (CheckpointError, dict))


# ---- search cache (JSON lines) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_raw(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("cache") / "cache.jsonl"
    space = small_space()
    evaluator = CachedEvaluator(SyntheticEvaluator(space), space, path)
    for plan in ([2, 2], [4, 3], [8, 5]):
        evaluator(plan)
    return path.read_bytes()


def open_cache(path: Path, raw: bytes):
    path.write_bytes(raw)
    space = small_space()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last line is dropped with a warning
        return CachedEvaluator(SyntheticEvaluator(space), space, path)


@FUZZ
@given(ops=MUTATIONS)
def test_search_cache_fuzz(scratch, cache_raw, ops):
    only_lowbit_errors(open_cache, scratch / "cache.jsonl", mutate(cache_raw, ops))
