"""``lowbit export`` and ``lowbit info`` on a tiny trained run (in-process via ``main``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowbit.cli.main import main
from lowbit.export import read_packed
from lowbit.export.grids import same_values
from lowbit.nn import quantized_layers
from lowbit.runs.model_io import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export-cli") / "run"
    assert main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--quantizer", "pact",
                 "--wbits", "2", "--abits", "3", "--batch-size", "128", "--quiet", "--threads", "1",
                 "--out", str(out)]) == 0
    return out


def test_export_packed_and_info(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "lenet.safetensors"
    assert main(["export", str(run), "--format", "packed", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "fc3" in text and "16.00x" in text  # 2-bit layers: 16x smaller than float32
    model, args, spec, plan = load_model(run)
    packed = read_packed(out)
    assert packed.args == args and packed.plan == plan and packed.spec == spec
    plain = packed.float_module()
    for name, layer in quantized_layers(model).items():
        assert same_values(plain.get_submodule(name).weight, layer.effective_weight())
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "lenet5" in info and "pact" in info and "floor" in info
    # the default output name, next to the run
    assert main(["export", str(run), "--quiet"]) == 0
    assert (run / "model.lowbit.safetensors").stat().st_size == out.stat().st_size


def test_export_onnx_from_run_and_from_packed(run: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    from lowbit.export.onnx_export import onnx_session, run_onnx

    out = tmp_path / "lenet.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--opset", "25", "--quiet",
                 "--onnx-kernels", "float"]) == 0
    packed_path = tmp_path / "lenet.safetensors"
    assert main(["export", str(run), "--out", str(packed_path), "--quiet"]) == 0
    again = tmp_path / "again.onnx"
    assert main(["export", str(packed_path), "--format", "onnx", "--out", str(again), "--quiet"]) == 0  # default
    fast = tmp_path / "fast.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(fast), "--quiet", "--onnx-kernels",
                 "integer"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "INT4" in text and "(float graph)" in text and "integer: none" in text
    assert main(["info", str(again)]) == 0  # the default for a quantized run: ORT's integer kernels, exact
    text = capsys.readouterr().out
    assert "(exact graph)" in text and "INT8" in text and "QLinearConv" in text and "QGemm" in text
    assert "float layer conv1" in text
    model, *_ = load_model(run)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        y = model.eval()(x)
    for path in (out, again, fast):
        assert (run_onnx(onnx_session(path), x) - y).abs().max() <= 0.02 * y.abs().max()


def test_user_errors_exit_2(run: Path, tmp_path: Path, capsys) -> None:
    packed = tmp_path / "m.safetensors"
    assert main(["export", str(run), "--out", str(packed), "--quiet"]) == 0
    raw = bytearray(packed.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bytes(raw))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    capsys.readouterr()
    cases = [(["info", str(broken)], "corrupt"), (["info", str(tmp_path / "nope")], "not found"),
             (["info", str(junk)], "neither"), (["export", str(tmp_path / "no-run")], "not found"),
             (["export", str(broken), "--format", "onnx"], "corrupt"), (["export", str(junk)], "neither"),
             (["export", str(run), "--opset", "21"], "--format onnx only"),
             (["export", str(run), "--onnx-kernels", "exact"], "--format onnx only"),
             (["bench", str(tmp_path / "nope")], "not found"),
             (["export", str(run), "--format", "onnx", "--int8", "--onnx-kernels", "exact"], "--int8 applies"),
             (["export", str(run), "--format", "onnx", "--opset", "13", "--out", str(tmp_path / "x.onnx")], "opset")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_bench_times_float_lowbit_and_ort(run: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", str(run), "--batch", "1", "2", "--rounds", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lowbit export" in text and "ORT quantize_static U8S8" in text and "QLinearConv" in text
    result = json.loads(out.read_text())
    assert set(result["batches"]) == {"1", "2"}
    assert set(result["batches"]["2"]["ms"]) == {"float", "lowbit", "ort_u8s8"}
    assert result["batches"]["1"]["x_float"]["float"] == 1.0
    assert result["ort_kernels"]["lowbit"].get("QLinearConv", 0) >= 1
