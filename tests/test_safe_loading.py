"""Safe loading: nothing lowbit reads can execute code.

Every loader of a file a user hands to lowbit (model files and run folders, --init, export and
info, the run folder's config.yaml/result.json/metrics.jsonl, --config, --plan, the search cache)
is fed payloads that create a sentinel file when deserialized unsafely: pickles whose
``__reduce__`` calls ``os.system("touch SENTINEL")`` (plain, inside a torch zip archive, and
inside a lowbit checkpoint with a *correct* checksum) and YAML ``!!python/...`` tags. The
sentinel must never appear and a lowbit error must be raised. A static scan of the sources
keeps new loaders honest (no ``torch.load`` without ``weights_only=True``, no unsafe YAML
loader, no ``pickle.load`` outside the restricted unpickler, no ``allow_pickle=True``).
The raw checkpoint loader and the CIFAR-10 pickle reader have their own tests
(test_checkpoint.py, test_data_readers.py).
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lowbit.cli.config import read_yaml
from lowbit.cli.main import main
from lowbit.errors import CheckpointError, ConfigError, LowbitError, PlanError
from lowbit.export import ExportError, read_packed
from lowbit.export.info import describe
from lowbit.export.packed import load_source
from lowbit.plan import Plan
from lowbit.runs.build import ModelArgs
from lowbit.runs.folder import RunFolder
from lowbit.runs.model_io import load_float_weights, load_model, save_model
from lowbit.search import CachedEvaluator, SyntheticEvaluator
from lowbit.train import MetricsWriter
from lowbit.train.checkpoint import FORMAT_VERSION, MAGIC
from search_support import small_space

SRC = Path(__file__).resolve().parents[1] / "src" / "lowbit"


class Evil:
    """Unpickling this runs ``touch SENTINEL`` in a shell."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch '{self.sentinel}'",))


def torch_zip(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def sealed(body: bytes) -> bytes:
    """A lowbit checkpoint header with the correct SHA-256 around ``body``: only the safe loader stands guard."""
    return MAGIC + bytes([FORMAT_VERSION]) + hashlib.sha256(body).digest() + body


def pickle_payloads(sentinel: Path) -> dict[str, bytes]:
    model_payload = {"kind": "model", "model": {"w": torch.ones(2)}, "meta": "{}", "x": Evil(sentinel)}
    return {
        "pickle-p2": pickle.dumps(model_payload, protocol=2),
        "pickle-p5": pickle.dumps(model_payload, protocol=5),
        "torch-zip": torch_zip(model_payload),
        "sealed-torch-zip": sealed(torch_zip(model_payload)),
        "sealed-pickle": sealed(pickle.dumps(model_payload, protocol=2)),
    }


def yaml_payloads(sentinel: Path) -> dict[str, str]:
    cmd = f"touch '{sentinel}'"
    return {
        "object-apply": f"model: !!python/object/apply:os.system [\"{cmd}\"]\n",
        "object-new": f"model: !!python/object/new:os.system [\"{cmd}\"]\n",
        "top-level-apply": f"!!python/object/apply:os.system [\"{cmd}\"]\n",
        "name": "model: !!python/name:os.system\n",
        "module": "model: !!python/module:os\n",
    }


def test_the_payloads_are_real(tmp_path):
    """Control: loaded unsafely, each payload does create its sentinel."""
    for kind in pickle_payloads(tmp_path / "unused"):
        sentinel = tmp_path / f"sentinel-{kind}"
        raw = pickle_payloads(sentinel)[kind]
        body = raw[len(MAGIC) + 1 + 32:] if raw.startswith(MAGIC) else raw
        if body.startswith(b"PK"):
            torch.load(io.BytesIO(body), weights_only=False)
        else:
            pickle.loads(body)
        assert sentinel.exists(), kind
    for kind in ("object-apply", "top-level-apply"):
        sentinel = tmp_path / f"sentinel-{kind}"
        yaml.unsafe_load(yaml_payloads(sentinel)[kind])
        assert sentinel.exists(), kind


# ---- model files, run folders, --init, export, info ---------------------------------------------

LENET = ModelArgs("lenet5", 10, 1, 12, 0.25)


def expect_refused(sentinel: Path, fn, *args, error: type = LowbitError) -> LowbitError:
    with pytest.raises(error) as info:
        fn(*args)
    assert not sentinel.exists(), f"{fn.__name__} ran the payload"
    return info.value


@pytest.mark.parametrize("kind", ["pickle-p2", "pickle-p5", "torch-zip", "sealed-torch-zip", "sealed-pickle"])
def test_model_file_and_run_folder_loaders(tmp_path, capsys, kind):
    sentinel = tmp_path / "SENTINEL"
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.ckpt").write_bytes(pickle_payloads(sentinel)[kind])
    (run / "checkpoint.ckpt").write_bytes(pickle_payloads(sentinel)[kind])
    for source in (run, run / "model.ckpt"):
        expect_refused(sentinel, load_model, source, error=CheckpointError)
        expect_refused(sentinel, load_float_weights, LENET.build(), source, error=CheckpointError)
        expect_refused(sentinel, load_source, source, error=CheckpointError)
        expect_refused(sentinel, read_packed, source, error=ExportError)
        expect_refused(sentinel, describe, source, error=ExportError)
    # the same through the command line: one error line, exit 2, no traceback
    (run / "config.yaml").write_text("model: lenet5\ndataset: digits\nepochs: 1\n")
    for argv in (["train", "--init", str(run), "--out", str(tmp_path / "o1")],
                 ["train", "--resume", "--out", str(run)],
                 ["export", str(run), "--out", str(tmp_path / "m.safetensors")],
                 ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                 ["info", str(run / "model.ckpt")]):
        capsys.readouterr()
        assert main([*argv, "--quiet"] if argv[0] == "train" else argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error:"), err
        assert not sentinel.exists()


def test_a_real_model_file_still_loads(tmp_path):
    """The loaders above refuse the payload, not the format: a genuine file loads."""
    model = LENET.build()
    save_model(tmp_path / "model.ckpt", model, LENET, None, None)
    loaded, args, _, _ = load_model(tmp_path)
    assert args == LENET and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                      model.state_dict().values()))


# ---- YAML: --config, the run folder's config.yaml ---------------------------------------------

@pytest.mark.parametrize("kind", list(yaml_payloads(Path("x"))))
def test_yaml_tags_are_refused(tmp_path, capsys, kind):
    sentinel = tmp_path / "SENTINEL"
    text = yaml_payloads(sentinel)[kind]
    config = tmp_path / "evil.yaml"
    config.write_text(text)
    expect_refused(sentinel, read_yaml, config, error=ConfigError)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(text)
    expect_refused(sentinel, RunFolder(run).read_config, error=CheckpointError)
    for argv in (["train", "--config", str(config), "--out", str(tmp_path / "o"), "--quiet"],
                 ["train", "--resume", "--out", str(run), "--quiet"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error:"), err
    assert not sentinel.exists()


# ---- JSON and JSON-lines files fed pickles -----------------------------------------------------

@pytest.mark.parametrize("kind", ["pickle-p2", "pickle-p5", "torch-zip"])
def test_json_loaders_fed_pickles(tmp_path, capsys, kind):
    sentinel = tmp_path / "SENTINEL"
    raw = pickle_payloads(sentinel)[kind]
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_bytes(raw)
    expect_refused(sentinel, RunFolder(run).read_result, error=CheckpointError)
    plan = tmp_path / "plan.json"
    plan.write_bytes(raw)
    expect_refused(sentinel, Plan.load, plan, error=PlanError)
    capsys.readouterr()
    assert main(["train", "--quantizer", "dorefa", "--plan", str(plan), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    cache = tmp_path / "cache.jsonl"
    cache.write_bytes(raw + b"\n")
    space = small_space()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect_refused(sentinel, CachedEvaluator, SyntheticEvaluator(space), space, cache, error=CheckpointError)
    # metrics.jsonl: a line that is not JSON is dropped on resume (a torn append), never decoded otherwise
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(b'{"epoch": 0, "train_loss": 1.0}\n' + raw + b"\n")
    MetricsWriter(metrics).truncate_after(5)
    assert metrics.read_text() == '{"epoch": 0, "train_loss": 1.0}\n'
    assert not sentinel.exists()


# ---- static scan: no unsafe deserializer anywhere in lowbit ------------------------------------

ALLOWED = {
    # (file, call): why it is safe
    ("data/safe_pickle.py", "pickle.Unpickler"): "the restricted unpickler itself (find_class allow-list)",
    ("distill/section_training.py", "pickle.loads"): "a job pickled by this process for its own worker "
                                                     "process; never read from a file",
    ("search/parallel.py", "pickle.loads"): "the evaluator pickled by this process for its own spawn "
                                            "workers (pool initializer argument); never read from a file",
    ("cli/config.py", "eval"): "evaluates dataclass type annotations written in lowbit's source",
    ("executors.py", "pickle.loads"): "the state this process pickled for its own Ray tasks (the search's "
                                      "evaluator), passed through Ray's object store; never read from a file",
}
UNSAFE = {"pickle.load", "pickle.loads", "pickle.Unpickler", "yaml.unsafe_load", "yaml.full_load",
          "yaml.load_all", "yaml.unsafe_load_all", "yaml.full_load_all", "marshal.loads", "marshal.load",
          "shelve.open", "dill.load", "dill.loads", "joblib.load", "eval", "exec", "torch.jit.load",
          "numpy.load", "np.load", "torch.load", "yaml.load"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def unsafe_calls(source: str, rel: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name not in UNSAFE or (rel, name) in ALLOWED:
                continue
            const = {k: v.value for k, v in keywords.items() if isinstance(v, ast.Constant)}
            if name == "torch.load" and const.get("weights_only") is True:
                continue
            if name in ("np.load", "numpy.load") and const.get("allow_pickle") is not True:
                continue  # numpy refuses pickled object arrays by default
            if name == "yaml.load" and _dotted(keywords.get("Loader", ast.Name("?"))) in ("yaml.SafeLoader",
                                                                                       "_UniqueKeyLoader"):
                continue
            problems.append(f"{rel}:{node.lineno}: {name}({', '.join(str(k) for k in keywords)})")
        elif isinstance(node, ast.Attribute) and _dotted(node) in ("yaml.Loader", "yaml.UnsafeLoader",
                                                                     "yaml.FullLoader"):
            problems.append(f"{rel}:{node.lineno}: {_dotted(node)}")
        elif isinstance(node, ast.ClassDef):
            if {_dotted(b) for b in node.bases} & {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"}:
                problems.append(f"{rel}:{node.lineno}: class {node.name} on an unsafe YAML loader")
    return problems


def test_the_scan_finds_unsafe_calls():
    bad = """
import pickle, torch, yaml, numpy as np
torch.load(f)
torch.load(f, weights_only=False)
pickle.loads(b)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
np.load(p, allow_pickle=True)
eval(s)
class L(yaml.FullLoader): pass
"""
    good = "torch.load(f, weights_only=True)\nnp.load(p, mmap_mode='r')\nyaml.safe_load(t)\n"
    assert {int(p.split(":")[1]) for p in unsafe_calls(bad, "x.py")} == set(range(3, 11))  # every line
    assert unsafe_calls(good, "x.py") == []


def test_no_unsafe_deserializer_in_the_sources():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        problems += unsafe_calls(path.read_text(), path.relative_to(SRC).as_posix())
    assert not problems, "unsafe deserialization:\n" + "\n".join(problems)
