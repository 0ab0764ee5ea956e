"""Experiment configs (configs/), ``lowbit run`` and RESULTS.md: every config loads and validates,
its dry run builds data (a synthetic stand-in here), model, quantizer and method without training,
``--set`` is typed by the options, unknown keys fail with a "did you mean", and
benchmarks/make_results.py renders from a results folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from lowbit.cli.main import main
from lowbit.cli.run_cmd import load_experiment
from lowbit.errors import ConfigError, LowbitError
from lowbit.quant.registry import NO_QUANTIZER
from lowbit.runs.config_dry_run import STAND_IN_SHAPES, dry_run
from lowbit.runs.config_run import COMMANDS, EXPERIMENT_FILE, parse_override, run_experiment
from lowbit.runs.search_run import SearchOptions
from lowbit.runs.train_run import TrainOptions
from lowbit.train import QUIET

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
IDS = [p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS]
SINREQ = ROOT / "configs/sinreq/simplenet-cifar10-dorefa.yaml"
DCQ_LENET = ROOT / "configs/dcq/lenet5-mnist-binary.yaml"

# What the abstracts (as issue 11 lists them) name: method folder -> file stems.
NETS = {"lenet5": "mnist", "simplenet": "cifar10", "svhnnet": "svhn", "resnet20": "cifar10", "vgg11": "cifar10",
        "alexnet": "cifar10", "resnet18": "cifar10", "mobilenet": "cifar10"}
EXPECTED = {
    "sinreq": {f"{m}-{NETS[m]}-{q}" for m in ("simplenet", "svhnnet", "resnet20", "vgg11", "alexnet", "resnet18")
               for q in ("dorefa", "wrpn")},
    "waveq": {f"{m}-{NETS[m]}" for m in ("alexnet", "simplenet", "mobilenet", "resnet18", "resnet20", "svhnnet",
                                         "vgg11")},
    "dcq": {f"{m}-{NETS[m]}-{k}" for m in ("lenet5", "resnet20", "svhnnet", "vgg11") for k in ("binary", "ternary")},
    "releq": {f"{m}-{NETS[m]}" for m in ("lenet5", "simplenet", "svhnnet", "resnet20", "vgg11", "alexnet",
                                         "mobilenet")},
}


@pytest.fixture(autouse=True)
def _no_data_no_runs(tmp_path, monkeypatch):
    """No dataset files (every file-based dataset gets its stand-in) and an empty working folder
    (no float run of a previous session is found and loaded)."""
    monkeypatch.setenv("LOWBIT_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.chdir(tmp_path)


def test_configs_cover_the_abstracts_experiments():
    found: dict[str, set[str]] = {}
    for path in CONFIGS:
        found.setdefault(path.parent.name, set()).add(path.stem)
    for method, stems in EXPECTED.items():
        assert found.get(method) == stems, method
    # one float reference per network the others start from
    required = [load_experiment(p).requires for p in CONFIGS]
    starts = {dep.source for dep in required if dep is not None}
    assert {Path(s).name for s in starts} == {p.name for p in (ROOT / "configs/float").glob("*.yaml")}


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_loads_and_validates(path: Path):
    raw = yaml.safe_load(path.read_text())
    exp = load_experiment(path)  # merge (keys exactly the dataclass's fields) + validate
    cls = COMMANDS[exp.command].options
    assert set(raw["options"]) <= set(cls.__dataclass_fields__)
    assert "{" not in str(exp.options.out) and exp.options.out
    paper = raw["paper"]
    assert isinstance(paper["claim"], str) and paper["claim"].strip()
    assert "reported" in paper and "measure" in paper
    assert paper["reported"] is None or isinstance(paper["reported"], dict)
    starts_from_float = exp.command in ("waveq", "dcq") or (
        exp.command == "train" and exp.options.quantizer != NO_QUANTIZER)
    if starts_from_float:  # expressed by `requires` + init/teacher = the required config's out
        assert exp.requires is not None and exp.requires.command == "train"
        assert exp.start == exp.requires.options.out
        assert exp.requires.options.quantizer == NO_QUANTIZER
    else:
        assert exp.requires is None and "requires" not in raw
    if exp.command == "search":  # trains its own float model: the validation split stays held out
        assert exp.options.init is None and exp.options.val_fraction > 0


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_dry_run_builds_without_training(path: Path, tmp_path: Path):
    exp = load_experiment(path)
    report = dry_run(exp, QUIET)
    if exp.options.dataset in STAND_IN_SHAPES:  # none of the configs' datasets is here
        assert report.stand_in and "STAND-IN DATA" in report.summary and report.data == "synthetic"
    assert report.params > 0
    assert "dry run, nothing trained or written" in report.summary and "\n" not in report.summary
    assert f"Would write {exp.options.out}" in report.summary
    assert not (tmp_path / "runs").exists()  # nothing written


# ---- --set ----------------------------------------------------------------------------------

def test_set_values_are_typed_by_the_option():
    assert parse_override(TrainOptions, "wbits=3") == ("wbits", 3)
    assert parse_override(TrainOptions, "lr=0.02") == ("lr", 0.02)
    assert isinstance(parse_override(TrainOptions, "lr=1")[1], float)
    assert parse_override(TrainOptions, "sinreq=null") == ("sinreq", None)
    assert parse_override(TrainOptions, "init=none") == ("init", None)
    assert parse_override(TrainOptions, "quantizer=none") == ("quantizer", "none")  # a str option keeps the word
    assert parse_override(TrainOptions, "tensorboard=true") == ("tensorboard", True)
    assert parse_override(TrainOptions, "val-fraction=0.1") == ("val_fraction", 0.1)
    assert parse_override(TrainOptions, "out=runs/a=b") == ("out", "runs/a=b")
    assert parse_override(SearchOptions, "bit_choices=2,4") == ("bit_choices", "2,4")
    assert parse_override(SearchOptions, "max_evals=null") == ("max_evals", None)
    with pytest.raises(ConfigError, match="wbits must be int"):
        parse_override(TrainOptions, "wbits=three")
    with pytest.raises(ConfigError, match="must be bool"):
        parse_override(TrainOptions, "resume=maybe")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override(TrainOptions, "wbits")


def test_set_unknown_key_says_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown option 'wbit' \(did you mean 'wbits'\?\)"):
        parse_override(TrainOptions, "wbit=3")
    with pytest.raises(ConfigError, match="did you mean 'finetune_epochs'"):
        load_experiment(ROOT / "configs/waveq/resnet20-cifar10.yaml", ["finetune_epoch=2"])


def test_set_overrides_options_and_the_out_placeholders():
    exp = load_experiment(SINREQ, ["wbits=3", "seed=2"])
    assert exp.options.wbits == 3 and exp.options.seed == 2
    assert exp.options.out == "runs/sinreq/simplenet-cifar10-dorefa-w3-s2"
    assert load_experiment(SINREQ, ["wbits=5"], out="elsewhere").options.out == "elsewhere"
    assert load_experiment(SINREQ, ["sinreq=null"]).options.sinreq is None  # the baseline
    with pytest.raises(LowbitError, match="simplenet-cifar10-dorefa.yaml: invalid --wbits value 9"):
        load_experiment(SINREQ, ["wbits=9"])  # validated after the overrides
    with pytest.raises(ConfigError, match=r"unknown placeholder \{wbit\}"):
        load_experiment(SINREQ, [], out="runs/x-{wbit}")


def test_dependency_rules():
    exp = load_experiment(DCQ_LENET)
    assert exp.requires is not None and exp.requires.options.model == "lenet5"
    # the float run of another dataset: an error that says what to run
    with pytest.raises(ConfigError, match=r"float/lenet5-mnist.yaml --set dataset=mnist-t10k out=DIR.*teacher=DIR"):
        load_experiment(DCQ_LENET, ["dataset=mnist-t10k", "data_dir=../shared/data/mnist-t10k"])
    # pointing elsewhere drops the requirement
    moved = load_experiment(DCQ_LENET, ["dataset=mnist-t10k", "teacher=runs/my-float"])
    assert moved.requires is None and "does not apply" in moved.notes[0]


def test_run_stops_when_the_required_float_run_is_missing():
    exp = load_experiment(SINREQ, ["device=cpu"])
    with pytest.raises(ConfigError, match=r"run `lowbit run .*configs/float/simplenet-cifar10.yaml` first"):
        run_experiment(exp, QUIET)


def test_bad_config_files(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return path

    with pytest.raises(ConfigError, match=r"unknown option 'wbit' \(did you mean 'wbits'\?\)"):
        load_experiment(write("command: train\noptions: {quantizer: dorefa, wbit: 3}\n"))
    with pytest.raises(ConfigError, match="did you mean 'options'"):
        load_experiment(write("command: train\noptons: {}\n"))
    with pytest.raises(ConfigError, match="unknown command 'trian'"):
        load_experiment(write("command: trian\n"))
    with pytest.raises(ConfigError, match="missing 'command'"):
        load_experiment(write("options: {}\n"))
    with pytest.raises(ConfigError, match="not a file"):
        load_experiment(write("command: train\nrequires: nowhere.yaml\noptions: {init: runs/f}\n"))
    loop = tmp_path / "loop.yaml"
    loop.write_text("command: train\nrequires: loop.yaml\noptions: {init: runs/f, out: runs/f}\n")
    with pytest.raises(ConfigError, match="circle"):
        load_experiment(loop)


# ---- the CLI --------------------------------------------------------------------------------

def test_cli_dry_run_exits_0(capsys):
    assert main(["run", str(DCQ_LENET), "--dry-run", "--set", "epochs=1", "finetune_epochs=0"]) == 0
    out, err = capsys.readouterr()
    assert "dry run, nothing trained or written" in out and "STAND-IN DATA" in out
    assert "stand-in" in err  # also announced as a warning
    assert "Schedule: 1 epochs per section" in out


def test_cli_unknown_set_key_exits_2(capsys):
    assert main(["run", str(SINREQ), "--dry-run", "--set", "wbit=3"]) == 2
    assert "did you mean 'wbits'" in capsys.readouterr().err


def test_cli_runs_a_config_and_its_dependency(tmp_path: Path):
    """A float config and one that requires it, on the embedded digits data: one epoch each."""
    configs = tmp_path / "configs"
    (configs / "float").mkdir(parents=True)
    (configs / "sinreq").mkdir()
    (configs / "float/lenet5-digits.yaml").write_text(
        "command: train\noptions: {model: lenet5, dataset: digits, epochs: 1, batch_size: 128, "
        "out: runs/float/lenet5-digits}\npaper: {claim: none, reported: null, measure: none}\n")
    sinreq = configs / "sinreq/lenet5-digits-dorefa.yaml"
    sinreq.write_text(
        "command: train\nrequires: ../float/lenet5-digits.yaml\noptions: {model: lenet5, dataset: digits, "
        "epochs: 1, batch_size: 128, init: runs/float/lenet5-digits, quantizer: dorefa, wbits: 2, sinreq: 0.01, "
        "lr: 0.01, out: 'runs/sinreq/w{wbits}-s{seed}'}\npaper: {claim: a claim, reported: {gain: 2.82}, measure: m}\n")
    assert main(["run", str(sinreq), "--quiet"]) == 2  # the float run is not there yet
    assert main(["run", str(configs / "float/lenet5-digits.yaml"), "--quiet"]) == 0
    assert main(["run", str(sinreq), "--quiet", "--set", "wbits=3"]) == 0
    run = tmp_path / "runs/sinreq/w3-s0"
    result = json.loads((run / "result.json").read_text())
    assert result["method"] == "dorefa+sinreq" and result["fp_accuracy"] is not None
    assert result["command"].startswith("lowbit run ")
    record = yaml.safe_load((run / EXPERIMENT_FILE).read_text())
    assert record["paper"]["reported"] == {"gain": 2.82} and record["overrides"] == {"wbits": 3}
    assert record["requires"].endswith("float/lenet5-digits.yaml")
    assert main(["run", str(sinreq), "--dry-run", "--set", "wbits=3", "--out", "runs/other"]) == 0  # loads it


# ---- RESULTS.md -------------------------------------------------------------------------------

@pytest.fixture
def make_results(monkeypatch):
    """benchmarks/make_results.py (a script, not a package module), imported for the test."""
    spec = importlib.util.spec_from_file_location("make_results", ROOT / "benchmarks/make_results.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_results", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_make_results_renders_from_a_results_folder(tmp_path: Path, make_results):
    results, configs = tmp_path / "results", tmp_path / "configs"
    results.mkdir()
    (configs / "dcq").mkdir(parents=True)
    (results / "foundation.json").write_text(json.dumps({
        "meta": {"machine": "x86_64, cpu", "python": "3.11", "command": "python benchmarks/foundation.py --epochs 1"},
        "rows": [{"model": "lenet5", "dataset": "mnist-t10k", "seed": 0, "accuracy": 0.9}]}))
    (results / "foundation.md").write_text("# Foundation table\n\nCommand: `python benchmarks/foundation.py`\n\n"
                                           "| model | acc |\n|---|---|\n| lenet5 | 90.00% |\n\n## Sub\n")
    (results / "waveq.json").write_text(json.dumps({"meta": {"seeds": [0, 1], "threads": 1}, "rows": []}))
    (results / "mystery.json").write_text(json.dumps({"meta": {"command": "python x.py"}}))
    (configs / "dcq/lenet5-mnist-binary.yaml").write_text(DCQ_LENET.read_text())
    text = make_results.render(results, configs, rendered_on="Test CPU (2 logical CPUs)", gpu=False)
    assert "Test CPU (2 logical CPUs)" in text
    assert "| repeat | `python benchmarks/foundation.py --epochs 1` |" in text
    assert "mnist-t10k split" in text and "| seeds | 0 (1 seed) |" in text
    assert "| lenet5 | 90.00% |" in text and "**Foundation table**" in text and "#### Sub" in text
    assert "Command:" not in text  # the facts table gives it
    assert "`waveq.md` is missing" in text and "--render-only" in text
    assert text.count("**Not yet run.**") == 17  # step_overhead, sinreq, dcq, releq, export, 3 of issue 15, 4 protocol,
    # issue 19's two, issue 20's and issue 17's two
    assert ("Not yet run: protocol_sinreq, protocol_waveq, protocol_dcq, protocol_releq, releq_protocol, "
            "waveq_sensitivity, step_overhead, sinreq, dcq, releq, dcq_own_model, export, export_onnx, "
            "onnx_linear_kernels, recipe_tuning, robustness, sinreq_cheat."
            in text)
    assert "python benchmarks/releq_bench.py" in text
    assert "`mystery.json`: `python x.py`" in text
    assert "`lowbit run configs/dcq/lenet5-mnist-binary.yaml`" in text and "MNIST" in text
    assert "nothing is claimed here" in text and "accuracy gain over dorefa points: 9.7" in text
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--results", str(results), "--configs", str(configs), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Results")
