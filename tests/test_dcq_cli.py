"""`lowbit dcq` end to end on the embedded digits data, and its user errors (exit 2, one line)."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.cli.main import main
from lowbit.data import ArrayLoader
from lowbit.runs.build import load_model_and_data
from lowbit.runs.model_io import load_model
from lowbit.train import evaluate, read_metrics

RESULT_FIELDS = {"command", "model", "dataset", "method", "seed", "accuracy", "fp_accuracy", "weight_bits",
                 "act_bits", "avg_bits", "weighted_bits", "size_bytes", "wall_s", "version",
                 "mode", "workers", "section_losses", "section_wall_s", "sections", "stitched_accuracy"}
FAST = ["--dataset", "digits", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dcq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dcq") / "run"
    code = main(["dcq", "--model", "lenet5", "--teacher-epochs", "1", "--sections", "2", "--quantizer", "twn",
                 "--wbits", "2", *FAST, "--out", str(out)])
    assert code == 0
    return out


def test_cli_writes_a_complete_run_folder(dcq_run) -> None:
    result = json.loads((dcq_run / "result.json").read_text())
    assert RESULT_FIELDS <= set(result)
    assert result["method"] == "dcq-twn" and result["dataset"] == "digits" and result["model"] == "lenet5"
    assert result["command"].startswith("lowbit dcq --model lenet5")
    assert result["weight_bits"] == {"conv1": 8, "conv2": 2, "fc3": 2, "fc4": 2, "fc5": 8}
    assert result["num_sections"] == 2 and len(result["split_at"]) == 1
    assert len(result["section_losses"]) == 2 and all(t > 0 for t in result["section_wall_s"])
    teacher = json.loads((dcq_run / "teacher" / "result.json").read_text())
    assert teacher["method"] == "float" and result["fp_accuracy"] == teacher["accuracy"]
    records = read_metrics(dcq_run / "metrics.jsonl")
    assert [(r["section"], r["epoch"]) for r in records] == [(0, 0), (1, 0)]
    assert json.loads((dcq_run / "plan.json").read_text())["layers"]["conv2"] == {"weight": 2, "act": 32}
    # model.ckpt rebuilds the stitched quantized network
    model, args, spec, _ = load_model(dcq_run)
    assert spec.name == "twn" and type(model).__name__ == "LeNet5"
    _, data, _ = load_model_and_data("lenet5", "digits")
    test = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    assert evaluate(model, test)[1] == result["accuracy"]


def test_cli_from_a_teacher_folder_with_yaml_and_finetune(dcq_run, tmp_path) -> None:
    config = tmp_path / "dcq.yaml"
    config.write_text("mode: sequential\nloss: smooth_l1\nsplit-at: conv2, fc3\nfinetune_epochs: 1\n")
    out = tmp_path / "again"
    code = main(["dcq", "--config", str(config), "--teacher", str(dcq_run / "teacher"), "--quantizer", "dorefa",
                 "--wbits", "2", "--abits", "4", *FAST, "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["split_at"] == ["conv2", "fc3"] and result["mode"] == "sequential" and result["loss"] == "smooth_l1"
    assert result["teacher"] == str(dcq_run / "teacher") and result["teacher_epochs"] is None
    assert result["act_bits"]["conv2"] == 4 and result["quantizer"]["scale"] == "learned"  # DCQ's default
    assert result["feature_norm"] and all(s["feature_rms"] > 0 for s in result["sections"][:-1])
    phases = [r["phase"] for r in read_metrics(out / "metrics.jsonl")]
    assert phases == ["section"] * 3 + ["finetune"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--model", "lenet5", "--wbits", "2", "--split-at", "conv3"], "did you mean 'conv2'"),
    (["--model", "lenet5", "--wbits", "2", "--split-at", "layer1.conv"], "unknown split point"),
    (["--model", "lenet5", "--wbits", "2", "--sections", "20"], "only 12 top-level children"),
    (["--model", "lenet5", "--wbits", "2", "--sections", "2", "--split-at", "conv2"], "not both"),
    (["--model", "lenet5", "--wbits", "2"], "--sections K or --split-at"),
    (["--model", "lenet5", "--sections", "2"], "--wbits"),
    (["--model", "lenet5", "--wbits", "2", "--sections", "2", "--mode", "sequential", "--workers", "2"],
     "independent"),
    (["--model", "lenet5", "--wbits", "2", "--sections", "2", "--loss", "l2"], "unknown DCQ loss"),
    (["--model", "lenet5", "--wbits", "2", "--sections", "2", "--quantizer", "float"], "needs a quantizer"),
    (["--wbits", "2", "--sections", "2"], "--teacher"),
    (["--model", "lenet5", "--sections", "2", "--quantizer", "lsq", "--wbits", "1"], "lsq bitwidth"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, extra, message) -> None:
    assert main(["dcq", "--dataset", "digits", "--quiet", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()  # nothing was written


def test_quantized_teacher_is_refused(dcq_run, tmp_path, capsys) -> None:
    code = main(["dcq", "--teacher", str(dcq_run), "--sections", "2", "--wbits", "2", "--dataset", "digits",
                 "--quiet", "--out", str(tmp_path / "x")])
    assert code == 2 and "float teacher" in capsys.readouterr().err
