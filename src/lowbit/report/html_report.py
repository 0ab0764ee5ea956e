"""``lowbit report``: one self-contained HTML file comparing run folders.

Sections: (a) comparison table, (b) bits per layer, (c) accuracy vs average bits with the Pareto
front (and the plans searches evaluated), (d) training curves from metrics.jsonl, (e) each run's
own plots. Images are embedded as base64 data URIs and the CSS is inline: no scripts, no external
resources. Every text taken from a run is HTML-escaped. A section whose fields no run has says
so instead of failing; a run missing a field shows a dash in that cell.
"""

from __future__ import annotations

import base64
import datetime as _dt
import itertools
import json
import math
import tempfile
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from lowbit import __version__
from lowbit.io import atomic_write_text
from lowbit.report import compare_plots as cp
from lowbit.report.comparison import COMPARISON_FILE, HEADER, comparison_rows, plot_comparison, protocol_line
from lowbit.report.html_style import CSS, bits_class, bits_legend
from lowbit.report.run_reader import RunData, health_summary, read_runs

SECTIONS = (("protocol", "Protocol comparisons"), ("comparison", "Comparison"), ("bits", "Bits per layer"), ("tradeoff", "Accuracy vs average bits"),
            ("curves", "Training curves"), ("runs", "Runs and their plots"))
PLOT_ORDER = ("weights", "beta", "rewards", "bits", "pareto")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".svg": "image/svg+xml"}
DASH = "&ndash;"
HEADLINE_FACTS = ("quantizer.name", "quantizer.scale", "seed", "epochs", "finetune_epochs", "val_accuracy",
                  "stitched_accuracy", "num_sections", "split_at", "section_losses", "sinreq.lambda", "grid_distance",
                  "waveq.accuracy_before_finetune", "waveq.budget", "search.strategy", "search.evaluations",
                  "search.cache_hits", "search.plans_visited", "search.best_reward", "search.best.val_accuracy",
                  "search.hypervolume", "search.stopped", "teacher", "init")


def write_report(run_dirs: Sequence[str | Path], out_path: str | Path, title: str | None = None) -> Path:
    """Read the runs ``run_dirs`` name (run folders, folders of runs, globs: see
    :func:`lowbit.report.run_reader.find_runs`) and write the report to ``out_path`` atomically.
    A ``lowbit compare`` folder (it holds comparison.json) brings its table and plot and its final
    runs (not the tuning runs)."""
    compared = [Path(d) for d in run_dirs if (Path(d) / COMPARISON_FILE).is_file()]
    runs = read_runs([Path(d) / "final" if Path(d) in compared else d for d in run_dirs])
    out = Path(out_path)
    atomic_write_text(out, render_report(runs, title, compared))
    return out


def render_report(runs: Sequence[RunData], title: str | None = None, compared: Sequence[Path] = ()) -> str:
    """The whole HTML document for ``runs``."""
    title = title or f"lowbit report: {len(runs)} run{'s' * (len(runs) != 1)}"
    colors = {run.name: cp.run_color(i) for i, run in enumerate(runs)}
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " · ".join(f'<a href="#{key}">{escape(label)}</a>' for key, label in SECTIONS)
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{len(runs)} run(s), written {stamp} by lowbit {escape(__version__)}</p>',
        f"<nav>{nav}</nav>",
        _protocol(compared), _comparison(runs, colors), _bits(runs), _tradeoff(runs, colors), _curves(runs, colors),
        _run_sections(runs, colors),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---- values ----------------------------------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    """A finite number, or None (bools, strings, NaN and missing values are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pct(value: Any) -> str:
    v = _num(value)
    return DASH if v is None else f"{100 * v:.2f}%"


def _fixed(value: Any, suffix: str = "", digits: int = 2) -> str:
    v = _num(value)
    return DASH if v is None else f"{v:,.{digits}f}{suffix}"


def _size(value: Any) -> str:
    v = _num(value)
    if v is None:
        return DASH
    return f"{v / 1024:,.1f} KiB" if v >= 10 * 1024 else f"{v:,.0f} B"


def _fact(key: str, value: Any) -> str:
    """A result field as text (escaped): fractions of keys naming an accuracy as percentages."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fact(key, v) for v in value)
    v = _num(value)
    if v is None:
        return DASH if value is None else escape(str(value))
    if "acc" in key.rsplit(".", 1)[-1] and 0.0 <= v <= 1.0:
        return f"{100 * v:.2f}%"
    return f"{int(v):,}" if isinstance(value, int) else f"{v:.4g}"


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _section(key: str, body: str, note: str = "") -> str:
    label = dict(SECTIONS)[key]
    note_html = f'<p class="note">{escape(note)}</p>' if note else ""
    return f'<section id="{key}">\n<h2>{escape(label)}</h2>\n{note_html}{body}\n</section>'


def _protocol(compared: Sequence[Path]) -> str:
    """Each ``lowbit compare`` folder's table (from comparison.json) and plot."""
    if not compared:
        return _section("protocol", "", "No lowbit compare folder was given.")
    parts = []
    for folder in compared:
        comparison = json.loads((folder / COMPARISON_FILE).read_text())
        plot = folder / "comparison.png"
        if plot.is_file():
            png = plot.read_bytes()
        else:  # the report writes nothing into run folders: draw it aside
            with tempfile.TemporaryDirectory() as scratch:
                png = plot_comparison(comparison, Path(scratch) / "comparison.png").read_bytes()
        table = ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in HEADER) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                           for row in comparison_rows(comparison))
                 + "</table>")
        intro = protocol_line(comparison)
        parts.append(f"<h3>{escape(str(folder))}</h3><p>{escape(intro)}</p>{table}"
                     f"{_img(png, 'image/png', 'comparison plot')}")
    return _section("protocol", "\n".join(parts))


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{color}"></span>'


def _img(data: bytes, mime: str, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{mime};base64,{encoded}" alt="{escape(alt)}">'


def _png_width(data: bytes) -> int | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big")


# ---- (a) comparison ------------------------------------------------------------------------------------------

def _point(run: RunData) -> tuple[float, float] | None:
    bits, acc = _num(run.result.get("avg_bits")), _num(run.result.get("accuracy"))
    return None if bits is None or acc is None else (bits, acc)


def _comparison(runs: Sequence[RunData], colors: dict[str, str]) -> str:
    points = {run.name: p for run in runs if (p := _point(run)) is not None}
    names = list(points)
    front = {names[i] for i in cp.pareto_front([points[n] for n in names])}
    head = ("run", "model", "dataset", "method", "test acc.", "float acc.", "avg bits", "weighted bits",
            "packed size", "compression", "wall time", "health", "Pareto")
    rows = []
    for run in runs:
        r = run.result
        cells = [f'<td class="name">{_swatch(colors[run.name])}{escape(run.name)}</td>',
                 *(f"<td>{escape(str(r[k])) if r.get(k) is not None else DASH}</td>"
                   for k in ("model", "dataset", "method")),
                 *(f'<td class="num">{v}</td>' for v in (
                     _pct(r.get("accuracy")), _pct(r.get("fp_accuracy")), _fixed(r.get("avg_bits")),
                     _fixed(r.get("weighted_bits")), _size(r.get("size_bytes")), _fixed(r.get("compression"), "×", 1),
                     _fixed(r.get("wall_s"), " s", 1))),
                 _health_cell(r),
                 f'<td class="center">{"★" if run.name in front else ""}</td>']
        rows.append(f"<tr>{''.join(cells)}</tr>")
    table = (f"<div class=\"scroll\"><table class=\"compare\"><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table></div>")
    note = ("Test accuracy on each run's test split; packed size is the weights at their bit widths; "
            "health: the run's own checks (learning, above chance, no layer on one level; hover for the "
            "figures); ★ = no other run has fewer average bits and higher accuracy.")
    return _section("comparison", table, note)


def _health_cell(result: dict[str, Any]) -> str:
    text = health_summary(result)
    if text is None:
        return f"<td>{DASH}</td>"
    checks = result["health"].get("checks", {})
    detail = "; ".join(f"{name}: {c.get('detail', '')}" for name, c in checks.items() if isinstance(c, dict))
    style = "" if text == "ok" else ' style="color:#b00020;font-weight:600"'
    return f'<td title="{escape(detail)}"{style}>{escape(text)}</td>'


# ---- (b) bits per layer -------------------------------------------------------------------------------------

def _layer_bits(run: RunData) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weight bits, activation bits) per layer: result.json's, else plan.json's explicit layers."""
    weights, acts = run.result.get("weight_bits"), run.result.get("act_bits")
    if isinstance(weights, dict) and weights:
        return weights, acts if isinstance(acts, dict) else {}
    layers = (run.plan or {}).get("layers")
    if isinstance(layers, dict):
        return ({n: v.get("weight") for n, v in layers.items() if isinstance(v, dict)},
                {n: v.get("act") for n, v in layers.items() if isinstance(v, dict)})
    return {}, {}


def _bits_cell(value: Any) -> str:
    v = _num(value)
    if v is None:
        return f'<td class="b">{DASH}</td>'
    text = "fp" if v >= 32 else f"{v:g}"
    return f'<td class="b {bits_class(v)}">{text}</td>'


def _bits(runs: Sequence[RunData]) -> str:
    per_run = [(run, *_layer_bits(run)) for run in runs]
    per_run = [item for item in per_run if item[1]]
    if not per_run:
        return _section("bits", "", "Skipped: no run records bits per layer (result.json weight_bits or plan.json).")
    layers = list(dict.fromkeys(name for _, weights, _ in per_run for name in weights))
    top = "".join(f'<th colspan="2">{escape(run.name)}</th>' for run, _, _ in per_run)
    sub = "<th>W</th><th>A</th>" * len(per_run)
    rows = []
    for layer in layers:
        cells = "".join(_bits_cell(w.get(layer)) + _bits_cell(a.get(layer)) for _, w, a in per_run)
        rows.append(f'<tr><td class="name">{escape(layer)}</td>{cells}</tr>')
    table = (f'<div class="scroll"><table class="bits"><thead><tr><th rowspan="2">layer</th>{top}</tr><tr>{sub}</tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table></div>")
    return _section("bits", bits_legend() + table, "W = weight bits, A = activation bits; fp = float (32-bit).")


# ---- (c) accuracy vs bits -----------------------------------------------------------------------------------

def _evaluated_plans(run: RunData) -> list[tuple[float, float]]:
    """The (avg_bits, accuracy) of every plan a search evaluated: metrics.jsonl's search lines,
    else evaluations.jsonl, else result.json's search Pareto set."""
    search = run.result.get("search")
    search = search if isinstance(search, dict) else {}
    sources = ([m for m in run.metrics if "epoch" not in m], run.evaluations,
               search.get("records") or search.get("pareto") or [])
    for records in sources:
        if not isinstance(records, list):
            continue
        plans = [(b, a) for r in records if isinstance(r, dict)
                 and (b := _num(r.get("avg_bits"))) is not None and (a := _num(r.get("accuracy"))) is not None]
        if plans:
            return plans
    return []


def _tradeoff(runs: Sequence[RunData], colors: dict[str, str]) -> str:
    points = [cp.RunPoint(run.name, *p, colors[run.name]) for run in runs if (p := _point(run)) is not None]
    if not points:
        return _section("tradeoff", "", "Skipped: no run records both accuracy and avg_bits.")
    evaluated = {run.name: plans for run in runs if (plans := _evaluated_plans(run))}
    missing = [run.name for run in runs if _point(run) is None]
    note = "Crosses: plans a search evaluated (validation accuracy after its short fine-tune, not test accuracy)." \
        if evaluated else ""
    if missing:
        note += f" Not drawn (no accuracy or avg_bits): {', '.join(missing)}."
    png = cp.accuracy_vs_bits(points, evaluated, colors)
    return _section("tradeoff", f'<figure class="wide">{_img(png, "image/png", "accuracy vs average bits")}</figure>',
                    note.strip())


# ---- (d) training curves ------------------------------------------------------------------------------------

def _phase(record: dict[str, Any]) -> str:
    phase = str(record.get("phase", "train"))
    section = _num(record.get("section"))
    return f"{phase} {section:g}" if section is not None else phase


def _first(record: dict[str, Any], keys: Sequence[str]) -> float | None:
    return next((v for k in keys if (v := _num(record.get(k))) is not None), None)


def _segments(run: RunData, color: str) -> list[cp.Segment]:
    """One segment per run of consecutive epoch lines with the same phase (lines without an
    ``epoch``, such as a search's evaluated plans, are not epochs)."""
    epochs = [m for m in run.metrics if _num(m.get("epoch")) is not None]
    segments, x = [], 0
    for i, (phase, group) in enumerate(itertools.groupby(epochs, key=_phase)):
        lines = list(group)
        segments.append(cp.Segment(
            run=run.name, phase=phase, color=color, style=cp.LINESTYLES[i % len(cp.LINESTYLES)],
            x=tuple(range(x + 1, x + 1 + len(lines))),
            loss=tuple(_first(m, ("train_task_loss", "train_loss", "loss")) for m in lines),
            accuracy=tuple(_first(m, ("test_acc", "val_acc")) for m in lines)))
        x += len(lines)
    return [s for s in segments if any(v is not None for v in s.loss + s.accuracy)]


def _curves(runs: Sequence[RunData], colors: dict[str, str]) -> str:
    segments = [s for run in runs for s in _segments(run, colors[run.name])]
    if not segments:
        return _section("curves", "", "Skipped: no run has per-epoch lines in metrics.jsonl.")
    shown = {s.run for s in segments}
    missing = [run.name for run in runs if run.name not in shown]
    note = ("Loss is the task (cross-entropy) loss where logged, else the total; DCQ sections log their own "
            "(feature) losses. Line style = phase.")
    if missing:
        note += f" No per-epoch metrics: {', '.join(missing)}."
    png = cp.training_curves(segments)
    return _section("curves", f'<figure class="wide">{_img(png, "image/png", "training curves")}</figure>', note)


# ---- (e) each run -------------------------------------------------------------------------------------------

def _plot_key(path: Path) -> tuple[int, str]:
    stem = path.stem.lower()
    return (PLOT_ORDER.index(stem) if stem in PLOT_ORDER else len(PLOT_ORDER), stem)


def _run_plots(run: RunData) -> str:
    figures = []
    for path in sorted(run.plots, key=_plot_key):
        try:
            data = path.read_bytes()
        except OSError:
            figures.append(f'<p class="note">cannot read {escape(str(path))}</p>')
            continue
        width = _png_width(data)
        css = "wide" if width is not None and width > 1000 else "half"
        figures.append(f'<figure class="{css}">{_img(data, MIME[path.suffix.lower()], path.name)}'
                       f"<figcaption>{escape(path.name)}</figcaption></figure>")
    return f'<div class="plots">{"".join(figures)}</div>' if figures else '<p class="note">No plots in this run.</p>'


def _run_facts(run: RunData) -> str:
    facts = [(key, value) for key in HEADLINE_FACTS if (value := _lookup(run.result, key)) is not None
             and not isinstance(value, dict) and (not isinstance(value, list) or len(value) <= 8)]
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{_fact(k, v)}</dd></div>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>' if items else ""


def _run_sections(runs: Sequence[RunData], colors: dict[str, str]) -> str:
    parts = []
    for i, run in enumerate(runs):
        command = run.result.get("command")
        parts.append(
            f'<article class="run" id="run-{i + 1}">'
            f"<h3>{_swatch(colors[run.name])}{escape(run.name)} "
            f'<span class="method">{escape(str(run.result.get("method", "")))}</span></h3>'
            f'<p class="path">{escape(str(run.path))}</p>'
            + (f'<pre class="cmd">{escape(str(command))}</pre>' if command else "")
            + (f'<p class="data">{escape(str(run.result["data"]))}</p>' if run.result.get("data") else "")
            + _run_facts(run) + _run_plots(run) + "</article>")
    return _section("runs", "\n".join(parts))
