"""``lowbit report``: one self-contained HTML file comparing run folders (lowbit.report.html_report).

Most runs here are written by hand (result.json, metrics.jsonl, plan.json, plots/) for speed; one
is a real 1-epoch ``lowbit train`` run, so the report is checked against what runs really write.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from lowbit.cli.main import main
from lowbit.errors import ConfigError, DataError
from lowbit.report.compare_plots import pareto_front
from lowbit.report.html_report import SECTIONS, write_report
from lowbit.report.run_reader import find_runs, read_run, run_names

PNG_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
LAYERS = ("conv1", "conv2", "fc3")


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG (a run's plots/ file without matplotlib)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + \
        chunk(b"IEND", b"")


def make_run(folder: Path, method: str = "dorefa", bits: int = 2, accuracy: float = 0.9,
             metrics: list[dict[str, Any]] | None = None, plots: tuple[str, ...] = (), **extra: Any) -> Path:
    """A minimal run folder as DESIGN.md's contract describes it."""
    folder.mkdir(parents=True)
    result = {"command": f"lowbit train --out {folder}", "model": "lenet5", "dataset": "digits", "method": method,
              "seed": 0, "accuracy": accuracy, "fp_accuracy": 0.97,
              "weight_bits": {n: bits for n in LAYERS}, "act_bits": {n: 32 for n in LAYERS},
              "avg_bits": float(bits), "weighted_bits": float(bits), "size_bytes": 1000 * bits,
              "compression": 32 / bits, "wall_s": 1.5, "version": "0.1.0", **extra}
    (folder / "result.json").write_text(json.dumps(result))
    if metrics is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for name in plots:
        (folder / "plots").mkdir(exist_ok=True)
        (folder / "plots" / name).write_bytes(tiny_png())
    return folder


def epochs(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"epoch": e, "train_loss": 1.0 / (e + 1), "test_acc": 0.5 + 0.1 * e, **fields} for e in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder of runs: float, DoReFa w2 (weights plot), WaveQ (two phases, β plot), a random search
    (evaluated plans in metrics.jsonl, its plots, a nested float run) and one without metrics."""
    root = tmp_path_factory.mktemp("report") / "runs"
    make_run(root / "float", method="float", bits=32, accuracy=0.97, metrics=epochs(3))
    make_run(root / "dorefa", metrics=epochs(2), plots=("weights.png",))
    make_run(root / "waveq", method="waveq-dorefa", bits=5, accuracy=0.96, plots=("beta.png",),
             metrics=epochs(2, phase="waveq") + epochs(1, phase="finetune"),
             waveq={"accuracy_before_finetune": 0.95})
    plans = [{"phase": "search", "index": i, "key": f"k{i}", "accuracy": 0.8 + 0.02 * i, "avg_bits": 3 + i,
              "reward": 0.1 * i} for i in range(4)]
    search = make_run(root / "random", method="random", bits=4, accuracy=0.93, plots=("rewards.png", "pareto.png"),
                      metrics=plans + epochs(1, phase="finetune"),
                      search={"strategy": "random", "evaluations": 4, "cache_hits": 0, "best_reward": 0.3,
                              "hypervolume": 4.2, "pareto": plans[-1:]})
    make_run(search / "float", method="float", bits=32, accuracy=0.95, metrics=epochs(2))
    make_run(root / "no-metrics", method="dcq-dorefa", bits=1, accuracy=0.8)
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("out") / "report.html"
    assert main(["report", str(runs), "--out", str(out), "--quiet"]) == 0
    return out.read_text()


def table_rows(html: str, css_class: str) -> list[str]:
    table = html.split(f'<table class="{css_class}">', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])


def test_every_section_and_one_row_per_run(report):
    for _, heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in report
    assert "Skipped" not in report  # every section has data here
    rows = table_rows(report, "compare")
    names = ["dorefa", "float", "no-metrics", "random", "random/float", "waveq"]  # nested float included
    assert len(rows) == len(names)
    for row, name in zip(rows, names):
        assert f"</span>{name}</td>" in row
    assert len(table_rows(report, "bits")) == len(LAYERS)
    for name in names:
        assert f"{name} <span class=\"method\">" in report  # each run's own section


def test_images_are_embedded_and_nothing_is_external(report):
    images = PNG_URI.findall(report)
    # the two comparison figures and the runs' own plots (weights, beta, rewards, pareto)
    assert len(images) == 2 + 4
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<script" not in report and "<link" not in report
    assert not re.search(r'(src|href)="(?!data:|#)', report)


def test_numbers_and_pareto_marks(report):
    rows = {re.search(r"</span>(.*?)</td>", r).group(1): r for r in table_rows(report, "compare")}
    assert "90.00%" in rows["dorefa"] and "97.00%" in rows["dorefa"]  # test and float accuracy
    assert "2.00" in rows["dorefa"] and "16.0×" in rows["dorefa"]
    on_front = {name for name, row in rows.items() if "★" in row}
    assert on_front == {"no-metrics", "dorefa", "random", "waveq", "float"}  # random/float: float is better


def test_run_name_and_fields_are_escaped(tmp_path):
    make_run(tmp_path / "<script>x", method="<script>alert(1)</script>", metrics=epochs(1))
    out = tmp_path / "r.html"
    write_report([tmp_path / "<script>x"], out, title="<b>T</b>")
    html = out.read_text()
    assert "<script" not in html and "<b>T" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;script&gt;x" in html


def test_run_without_metrics_or_plots_still_reports(tmp_path):
    run = make_run(tmp_path / "bare", accuracy=0.5)
    out = tmp_path / "r.html"
    write_report([run], out)
    html = out.read_text()
    assert len(table_rows(html, "compare")) == 1
    assert "Skipped: no run has per-epoch lines" in html and "No plots in this run." in html


def test_result_with_missing_fields_still_reports(tmp_path):
    run = tmp_path / "sparse"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"method": "float", "accuracy": "n/a"}))
    out = tmp_path / "r.html"
    write_report([run], out)
    html = out.read_text()
    assert "Skipped: no run records bits per layer" in html and "Skipped: no run records both" in html


@pytest.mark.parametrize("make_bad", ["empty_folder", "missing", "file"])
def test_non_run_path_is_a_user_error_and_writes_nothing(tmp_path, capsys, make_bad):
    good = make_run(tmp_path / "good", metrics=epochs(1))
    bad = tmp_path / "bad"
    if make_bad == "empty_folder":
        (bad / "sub").mkdir(parents=True)
    elif make_bad == "file":
        bad.write_text("not a run")
    out = tmp_path / "report.html"
    assert main(["report", str(good), str(bad), "--out", str(out)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_files_name_the_path(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "result.json").write_text('{"accuracy": 0.5,')
    with pytest.raises(DataError, match=re.escape(str(run / "result.json"))):
        read_run(run)
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    assert "result.json is not valid JSON" in capsys.readouterr().err
    run2 = make_run(tmp_path / "run2")
    (run2 / "metrics.jsonl").write_text('{"epoch": 0}\n{oops\n{"epoch": 2}\n')
    with pytest.raises(DataError, match="metrics.jsonl line 2"):
        read_run(run2)
    (run2 / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1, "tr')  # torn last line: a crash mid-append
    assert [m["epoch"] for m in read_run(run2).metrics] == [0]


def test_finding_runs(runs, tmp_path):
    found = find_runs([runs / "waveq", runs, str(runs / "d*")])  # a run, its folder again, a quoted glob
    assert [p.name for p in found] == ["waveq", "dorefa", "float", "no-metrics", "random", "float"]
    assert find_runs([runs / "random"]) == [runs / "random"]  # a run named directly: not its nested float
    assert find_runs([runs / "random" / "result.json"]) == [runs / "random"]
    assert run_names([runs / "float", runs / "random" / "float", runs / "waveq"]) == ["runs/float", "random/float",
                                                                                      "waveq"]
    with pytest.raises(ConfigError, match="matches no"):
        find_runs([str(tmp_path / "nothing*")])


def test_pareto_front():
    points = [(2.0, 0.9), (4.0, 0.95), (4.0, 0.9), (3.0, 0.85), (32.0, 0.95), (1.0, 0.5)]
    assert pareto_front(points) == [5, 0, 1]


def test_real_run_folder(tmp_path):
    """A 1-epoch DoReFa run written by ``lowbit train``: its fields, curves and weights plot."""
    run = tmp_path / "w2"
    assert main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--quantizer", "dorefa",
                 "--wbits", "2", "--batch-size", "128", "--threads", "1", "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--quiet"]) == 0
    html = out.read_text()
    assert "Skipped" not in html and "weights.png</figcaption>" in html
    assert len(PNG_URI.findall(html)) == 3  # tradeoff, curves, weights
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "w2"]  # atomic write left no temp file


def test_report_does_not_import_torch():
    code = ("import sys; import lowbit.report.html_report, lowbit.cli.report_cmd; "
            "assert 'torch' not in sys.modules and 'lowbit.models' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
