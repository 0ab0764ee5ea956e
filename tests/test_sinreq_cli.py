"""`lowbit train --sinreq`: the method name, λ and schedule recorded, grid distance for every quantized run."""

from __future__ import annotations

import json

from lowbit.cli.main import main

BASE = ["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--quiet", "--threads", "1",
        "--quantizer", "dorefa", "--wbits", "2", "--lr", "0.01"]


def _result(path):
    return json.loads((path / "result.json").read_text())


def test_sinreq_run_records_method_and_grid_distance(tmp_path) -> None:
    assert main([*BASE, "--out", str(tmp_path / "plain")]) == 0
    assert main([*BASE, "--sinreq", "0.5", "--sinreq-schedule", "warmup", "--out", str(tmp_path / "reg")]) == 0
    plain, reg = _result(tmp_path / "plain"), _result(tmp_path / "reg")
    assert plain["method"] == "dorefa" and "sinreq" not in plain
    assert reg["method"] == "dorefa+sinreq"
    assert reg["sinreq"] == {"lambda": 0.5, "schedule": "warmup", "domain": "aligned", "mode": "qat",
                             "train_quantizer": False}
    for result in (plain, reg):
        assert 0.0 <= result["grid_distance"] <= 1.0
        assert set(result["grid_distance_layers"]) == set(result["weight_bits"])
    line = json.loads((tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["sinreq"] > 0 and "grid_distance" in line


def test_sinreq_without_quantizer_is_a_user_error(tmp_path, capsys) -> None:
    code = main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--quiet",
                 "--sinreq", "0.1", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "needs a quantizer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
