"""Write RESULTS.md from what the benchmarks saved: ``benchmarks/results/*.json`` (the facts: machine,
threads, data, seeds, command) and the tables each benchmark rendered next to them (``*.md``).
Then list the paper experiments of ``configs/`` that this machine cannot run (data or GPU absent),
with the command to run each elsewhere; nothing is claimed for them.

    python benchmarks/make_results.py [--results benchmarks/results] [--configs configs] [--out RESULTS.md]

Only reads files (and the machine's CPU name); runs nothing. ``make bench`` runs the benchmarks
first, then this. A benchmark whose JSON is absent is listed as "not yet run".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Honest names of the data the benchmarks use (BENCHMARKS.md "Data available here").
DATA = {
    "digits": "digits: scikit-learn's bundled 8x8 digits (1,797 images; 360 test)",
    "mnist1d": "mnist1d: MNIST-1D from mnist1d.make_dataset defaults (4,000 train / 1,000 test)",
    "mnist-t10k": "mnist-t10k split: 8,000 train / 2,000 test of the official MNIST t10k files "
                  "(fixed seeded permutation; not the MNIST training set)",
    "synthetic": "synthetic: seeded random class-mean + noise images",
}
FILE_DATASETS = {"mnist", "mnist-t10k", "cifar10", "svhn"}
DATASET_NAMES = {"mnist": "MNIST (train + test IDX files)", "cifar10": "CIFAR-10 (python batches)",
                 "svhn": "SVHN (train/test_32x32.mat)", "mnist-t10k": "MNIST t10k IDX files"}


@dataclass(frozen=True)
class Bench:
    key: str  # results/<key>.json and .md
    script: str
    title: str
    section: str  # BENCHMARKS.md section
    facts: Callable[[dict[str, Any]], dict[str, str]]
    render_only: bool = False  # the script can rewrite its .md from its .json


# ---- facts per benchmark (from its JSON; fixed facts of the script where the JSON has none) ----

def _datasets(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        name = r.get("dataset")
        if name and name not in seen:
            seen.append(name)
    return seen


def _data_text(names: list[str], extra: list[str] = ()) -> str:
    items = [DATA.get(n, n) for n in names] + [e for e in extra if e]
    return "; ".join(items) if items else "not recorded"


def _seeds(value: Any) -> str:
    if value is None or value == []:
        return "not recorded"
    if isinstance(value, (list, tuple, set)):
        values = sorted(set(value))
        return f"{', '.join(map(str, values))} ({len(values)} seed{'s' if len(values) != 1 else ''})"
    return str(value)


def _machine(*parts: Any) -> str:
    return ", ".join(str(p) for p in parts if p) or "not recorded"


def step_overhead_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    shapes = {"lenet5": "1x28x28", "resnet20": "3x32x32"}
    setups = []
    for r in d.get("rows", []):
        label = f"{r['model']} batch {r['batch']} at {shapes.get(r['model'], '?')}"
        if label not in setups:
            setups.append(label)
    return {"machine": _machine(m.get("machine"), m.get("device"), f"torch {m['torch']}" if m.get("torch") else None),
            "threads": f"{m['threads']} torch thread(s)" if "threads" in m else "not recorded",
            "data": f"random tensors ({'; '.join(setups) or 'not recorded'}); times only, no accuracy",
            "seeds": "weights and inputs from seed 0; median of "
                     f"{m.get('rounds', '?')} interleaved rounds of {m.get('steps_per_round', '?')} steps",
            "command": m.get("command", "python benchmarks/step_overhead.py")}


def foundation_facts(d: dict[str, Any]) -> dict[str, str]:
    m, rows = d.get("meta", {}), d.get("rows", [])
    return {"machine": _machine(m.get("machine"), f"python {m['python']}" if m.get("python") else None),
            "threads": "1 torch thread per run (the script's setting)",
            "data": _data_text(_datasets(rows)),
            "seeds": _seeds([r["seed"] for r in rows if "seed" in r]),
            "command": m.get("command", "python benchmarks/foundation.py")}


def sinreq_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": "not recorded in the JSON",
            "threads": "1 torch thread per run (the script's setting)",
            "data": _data_text(_datasets(d.get("rows", []))) + "; λ chosen on a validation split of mnist1d's train",
            "seeds": _seeds(m.get("seeds")),
            "command": m.get("command", "python benchmarks/sinreq.py")}


def waveq_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine(m.get("device")),
            "threads": f"{m['threads']} torch thread(s)" if "threads" in m else "1 torch thread (the script's setting)",
            "data": _data_text(_datasets(d.get("rows", []))),
            "seeds": _seeds(m.get("seeds")),
            "command": m.get("command", "python benchmarks/waveq_bench.py")}


def dcq_facts(d: dict[str, Any]) -> dict[str, str]:
    timing = d.get("timing") or {}
    return {"machine": _machine(f"torch {d['torch']}" if d.get("torch") else None),
            "threads": "1 torch thread per run; the timing table compares 1 and 2 processes / threads",
            "data": _data_text(_datasets(d.get("runs", [])),
                               [f"timing: {timing['data']}" if timing.get("data") else ""]),
            "seeds": _seeds(d.get("seeds")),
            "command": (d.get("command") or "python benchmarks/dcq_bench.py").strip()}


def releq_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine(m.get("device")),
            "threads": f"{m['threads']} torch thread(s)" if "threads" in m else "1 torch thread (the script's setting)",
            "data": _data_text(_datasets(d.get("rows", []))) + "; search accuracy on a validation split of train",
            "seeds": _seeds(m.get("seeds")),
            "command": m.get("command", "python benchmarks/releq_bench.py")}


def export_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine(m.get("machine"), f"torch {m['torch']}" if m.get("torch") else None,
                                f"onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else None),
            "threads": "1 torch thread, 1 ONNX Runtime thread (the script's setting)",
            "data": f"random N(0, 1) inputs, batch {m.get('batch', '?')}; random-init weights (no accuracy)",
            "seeds": _seeds(m.get("seed")),
            "command": m.get("command", "python benchmarks/export_bench.py")}


def export_onnx_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine(m.get("machine"), f"torch {m['torch']}" if m.get("torch") else None,
                                f"onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else None),
            "threads": "1 torch thread, 1 ONNX Runtime thread (the script's setting)",
            "data": "speed: random-init nets at their paper input shapes, N(0, 1) inputs; accuracy: nets trained on "
                    f"{DATA['mnist-t10k']} (LeNet-5), {DATA['mnist1d']} (conv1d), {DATA['digits']} (ResNet-20, "
                    "MobileNet), the whole test split",
            "seeds": _seeds(m.get("seed")),
            "command": m.get("command", "python benchmarks/export_onnx_bench.py")}


def onnx_linear_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine(m.get("machine"), f"onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else None),
            "threads": "1 ONNX Runtime thread", "data": "random 4-bit weight and activation codes (seeded)",
            "seeds": "numpy default_rng(0)", "command": m.get("command", "python benchmarks/onnx_linear_kernels.py")}


def recipe_tuning_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine(m.get("machine"), f"python {m['python']}" if m.get("python") else None),
            "threads": "1 torch thread per run (the script's setting)",
            "data": DATA["digits"] + "; " + m.get("scored_on", "validation"),
            "seeds": _seeds(m.get("seed")),
            "command": m.get("command", "python benchmarks/recipe_tuning.py")}


def robustness_facts(d: dict[str, Any]) -> dict[str, str]:
    m, rows = d.get("meta", {}), d.get("rows", [])
    data = {"lenet5-digits": "digits", "resnet20-digits": "digits", "conv1d-mnist1d": "mnist1d"}
    return {"machine": _machine(m.get("machine"), f"python {m['python']}" if m.get("python") else None),
            "threads": "1 torch thread per run (the script's setting)",
            "data": _data_text(list(dict.fromkeys(data.get(r["setup"], r["setup"]) for r in rows))),
            "seeds": _seeds(m.get("seed")),
            "command": m.get("command", "python benchmarks/robustness.py")}


def sinreq_cheat_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine(m.get("machine")),
            "threads": "1 torch thread (the script's setting)",
            "data": DATA["digits"],
            "seeds": _seeds(m.get("seeds")),
            "command": m.get("command", "python benchmarks/sinreq_cheat.py")}


def protocol_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    comparisons = d.get("comparisons", {})
    datasets = sorted({a["options"].get("dataset") for c in comparisons.values() for a in c["arms"]} - {None})
    return {"machine": _machine(m.get("machine"), f"torch {m['torch']}" if m.get("torch") else None),
            "threads": "1 torch thread per run",
            "data": _data_text(datasets) + f"; tuning hold-out: {m.get('tuning_fraction', 0.2):g} of each train split "
                    "(fixed seed), the test split never loaded while tuning",
            "seeds": _seeds(m.get("seeds")),
            "command": m.get("command", "python benchmarks/protocol_bench.py")}


def releq_protocol_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    data = {"lenet5": "mnist-t10k", "conv1d": "mnist1d", "resnet20": "digits"}
    return {"machine": _machine(m.get("device")),
            "threads": "1 torch thread per process, two processes at a time",
            "data": _data_text(list(dict.fromkeys(data.get(r["setup"], r["setup"]) for r in d.get("rows", []))))
                    + "; search accuracy on a 20% validation split of train, test read once per final plan",
            "seeds": _seeds(m.get("seeds")),
            "command": m.get("command", "python benchmarks/releq_bench.py")}


def waveq_sensitivity_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    data = {"lenet5": "mnist-t10k", "conv1d": "mnist1d", "resnet20": "digits"}
    return {"machine": _machine("cpu"), "threads": "1 torch thread",
            "data": _data_text(list(dict.fromkeys(data.get(r["model"], r["model"]) for r in d.get("rows", []))))
                    + "; WaveQ scored on the tuning hold-out, test never read",
            "seeds": _seeds(sorted({r["seed"] for r in d.get("rows", [])})),
            "command": m.get("command", "python benchmarks/waveq_sensitivity.py")}


def dcq_own_model_facts(d: dict[str, Any]) -> dict[str, str]:
    m = d.get("meta", {})
    return {"machine": _machine("cpu"), "threads": "1 torch thread", "data": DATA["digits"] + "; 20% validation split",
            "seeds": _seeds(m.get("seed")), "command": m.get("command", "python benchmarks/dcq_own_model.py")}


PROTOCOL_STUDIES = (("sinreq", "SinReQ against its base quantizers, under the protocol", "2"),
                    ("waveq", "WaveQ against uniform plans at equal bits and equal fine-tune, under the protocol", "3"),
                    ("dcq", "DCQ against plain QAT with the same quantizer, under the protocol", "4"),
                    ("releq", "ReLeQ against random search and greedy descent, under the protocol", "5"))

BENCHES = [
    *(Bench(f"protocol_{key}", "protocol_bench.py", title, section, protocol_facts)
      for key, title, section in PROTOCOL_STUDIES),
    Bench("releq_protocol", "releq_bench.py", "Mixed-precision search: ReLeQ, random, greedy, TPE and HAWQ under one "
          "budget, under the protocol", "5", releq_protocol_facts, render_only=True),
    Bench("waveq_sensitivity", "waveq_sensitivity.py", "WaveQ's learned bits against the layers' Hessian sensitivity",
          "3", waveq_sensitivity_facts),
    Bench("step_overhead", "step_overhead.py", "Training-step overhead", "1", step_overhead_facts),
    Bench("foundation", "foundation.py", "Accuracy at 2 bits: float, DoReFa, WRPN", "2", foundation_facts),
    Bench("sinreq", "sinreq.py", "Earlier: SinReQ against its base quantizers (before the protocol)", "2", sinreq_facts, render_only=True),
    Bench("waveq", "waveq_bench.py", "Earlier: WaveQ learned plans against uniform plans (before the protocol)", "3", waveq_facts, render_only=True),
    Bench("dcq", "dcq_bench.py", "Earlier: DCQ against plain QAT; parallel sections (before the protocol)", "4", dcq_facts),
    Bench("releq", "releq_bench.py", "Earlier: ReLeQ against random search and greedy descent (before the protocol; "
          "the script's earlier version, in git history before 2026-12-03)", "5", releq_facts),
    Bench("dcq_own_model", "dcq_own_model.py", "DCQ on a model outside the zoo (torch.fx sections)", "4",
          dcq_own_model_facts),
    Bench("export", "export_bench.py", "Export: packed size and deployment paths", "6", export_facts),
    Bench("export_onnx", "export_onnx_bench.py", "Export to ONNX Runtime: integer kernels against float and ORT's "
          "U8S8", "6", export_onnx_facts),
    Bench("onnx_linear_kernels", "onnx_linear_kernels.py", "4-bit Linear layers in ONNX Runtime: Gemm, QGemm, "
          "MatMulNBits", "6", onnx_linear_facts),
    Bench("recipe_tuning", "recipe_tuning.py", "Default recipes, chosen on validation", "7", recipe_tuning_facts),
    Bench("robustness", "robustness.py", "Robustness matrix at the default recipes", "7", robustness_facts),
    Bench("sinreq_cheat", "sinreq_cheat.py", "SinReQ on learned scales: before and after the fix", "2",
          sinreq_cheat_facts),
]


# ---- the machine that renders (and, under `make bench`, ran) the tables ------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch means no GPU we can use
        return False


# ---- benchmark sections -----------------------------------------------------------------------

def embedded_table(md: str) -> list[str]:
    """A benchmark's own .md, fitted under our heading: its title becomes a bold line, its
    headings go down two levels, its 'Command:' line goes (the facts table gives the command)."""
    out = []
    for line in md.strip("\n").splitlines():
        if line.startswith("Command:"):
            rest = re.sub(r"^Command:\s*`[^`]*`\.?\s*", "", line).strip()
            if rest:
                out.append(rest)
            continue
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading and len(heading.group(1)) == 1:
            out.append(f"**{heading.group(2).strip()}**")
        elif heading:
            out.append(f"{'#' * min(len(heading.group(1)) + 2, 6)} {heading.group(2)}")
        else:
            out.append(line)
    return out


def bench_section(number: int, bench: Bench, results: Path, rendered_on: str) -> list[str]:
    lines = [f"## {number}. {bench.title}", "", f"BENCHMARKS.md section {bench.section}; "
             f"script `benchmarks/{bench.script}`.", ""]
    json_path, md_path = results / f"{bench.key}.json", results / f"{bench.key}.md"
    if not json_path.is_file():
        return lines + [f"**Not yet run.** Run `python benchmarks/{bench.script}` (or `make bench`), then "
                        "`python benchmarks/make_results.py`.", ""]
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        return lines + [f"**Unreadable result file** `{json_path.name}` ({exc}); rerun "
                        f"`python benchmarks/{bench.script}`.", ""]
    try:
        facts = bench.facts(data)
    except (KeyError, TypeError, AttributeError) as exc:  # a JSON from another version of the script
        facts = {"machine": "?", "threads": "?", "data": "?", "seeds": "?",
                 "command": f"python benchmarks/{bench.script}", "note": f"facts not readable ({exc!r})"}
    machine = f"{facts['machine']} (recorded); CPU model not recorded, this file rendered on {rendered_on}"
    lines += ["| | |", "|---|---|", f"| machine | {machine} |", f"| threads | {facts['threads']} |",
              f"| data | {facts['data']} |", f"| seeds | {facts['seeds']} |",
              f"| repeat | `{facts['command']}` |"]
    if facts.get("note"):
        lines.append(f"| note | {facts['note']} |")
    lines.append("")
    if md_path.is_file():
        lines += embedded_table(md_path.read_text())
    else:
        fix = (f"`python benchmarks/{bench.script} --render-only` rewrites it from the JSON" if bench.render_only
               else f"rerun `python benchmarks/{bench.script}`")
        lines.append(f"The table file `{md_path.name}` is missing: {fix}.")
    return lines + [""]


def other_results(results: Path) -> list[str]:
    known = {b.key for b in BENCHES}
    others = sorted(p for p in results.glob("*.json") if p.stem not in known)
    if not others:
        return []
    lines = ["## Other result files", "", "Written by scripts this page does not know; listed as they are.", ""]
    for path in others:
        try:
            data = json.loads(path.read_text())
            meta = data.get("meta", data) if isinstance(data, dict) else {}
            command = meta.get("command") if isinstance(meta, dict) else None
        except (OSError, ValueError):
            command = None
        md = path.with_suffix(".md")
        lines.append(f"- `{path.name}`" + (f": `{command}`" if command else "")
                     + (f" (table: `{md.name}`)" if md.is_file() else ""))
    return lines + [""]


# ---- the paper experiments (configs/) ---------------------------------------------------------

def data_here(dataset: str, data_dir: str | None) -> bool:
    if dataset not in FILE_DATASETS:
        return True
    if data_dir:
        folder = Path(data_dir)
        return (folder if folder.is_absolute() else ROOT / folder).is_dir()
    root = Path(os.environ.get("LOWBIT_DATA_DIR", "data"))
    return ((root if root.is_absolute() else ROOT / root) / dataset).is_dir()


def _reported(paper: dict[str, Any]) -> str:
    reported = paper.get("reported")
    if not isinstance(reported, dict) or not reported:
        return "no number"
    items = [f"{k.replace('_', ' ')}: {v}" for k, v in reported.items() if k != "scope"]
    return "; ".join(items) or "no number"


GROUPS = {  # configs/<group>/: heading, in the order the page lists them
    "float": "Float references: the runs the other configs start from (run each once, first)",
    "sinreq": "SinReQ: DoReFa and WRPN with the sinusoidal regularizer at fixed 3-5 bits",
    "waveq": "WaveQ (SINAREQ): learned heterogeneous per-layer bits",
    "dcq": "DCQ: binary and ternary networks by sectional distillation",
    "releq": "ReLeQ: per-layer bits searched by a PPO agent",
}


def config_row(path: Path, configs: Path, gpu: bool) -> tuple[list[str], bool]:
    """([config, network/data, needs, reports, run], whether this machine lacks what it needs)."""
    rel = path.relative_to(configs.parent).as_posix()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [f"`{rel}`", "unreadable", str(exc).splitlines()[0], "", ""], True
    options, paper = raw.get("options") or {}, raw.get("paper") or {}
    dataset = str(options.get("dataset", "?"))
    model = options.get("model")
    if model is None and raw.get("requires"):
        try:
            required = yaml.safe_load((path.parent / raw["requires"]).read_text()) or {}
            model = (required.get("options") or {}).get("model")
        except (OSError, yaml.YAMLError):
            model = None
    needs = []
    has_data = data_here(dataset, options.get("data_dir"))
    if not has_data:
        needs.append(f"{DATASET_NAMES.get(dataset, dataset)} data (absent here)")
    device = str(options.get("device", "cpu"))
    if device.startswith("cuda"):
        needs.append("a GPU" + ("" if gpu else " (none here)"))
    if raw.get("requires"):
        dep = Path(os.path.normpath(str(Path(rel).parent / raw["requires"]))).as_posix()
        needs.append(f"first `lowbit run {dep}`")
    name = paper.get("network") or model
    network = f"{name} (`{model}`) / {dataset}" if model else f"{name} / {dataset}"
    lacking = not has_data or (device.startswith("cuda") and not gpu)
    return [f"`{rel}`", network, "; ".join(needs) or "nothing more", _reported(paper), f"`lowbit run {rel}`"], lacking


def config_section(configs: Path, gpu: bool) -> list[str]:
    lines = ["## Paper experiments (configs/): not run here", ""]
    if not configs.is_dir():
        return lines + [f"No `{configs.name}/` folder found; nothing listed.", ""]
    lines += ["One config per experiment the abstracts name (`../shared/seeds/abstracts.txt`); each holds the "
              "abstract's claim and number under `paper:` and the comparison to make under `paper.baseline`. The "
              "tables above measure the methods on the small data this machine has; they are not these "
              "experiments, and **nothing is claimed here for any of them**. To run one elsewhere: install lowbit, "
              "put the datasets under one folder (`cifar10/`, `svhn/`, `mnist/`) and point `LOWBIT_DATA_DIR` at "
              "it, then from the repository root run the float config it requires (once per network) and the "
              "config itself. `--dry-run` checks a config without data or GPU; `--set key=value` changes an "
              "option (for example `--set wbits=3` for the SinReQ bitwidths, `--set seed=1` for another seed).", ""]
    by_group: dict[str, list[Path]] = {}
    for path in sorted(configs.rglob("*.yaml")):
        group = path.relative_to(configs).parts[0] if len(path.relative_to(configs).parts) > 1 else "other"
        by_group.setdefault(group, []).append(path)
    header = ["| config | network / data | needs | the abstract reports | run |", "|---|---|---|---|---|"]
    total = lacking_total = 0
    for group in [*GROUPS, *sorted(g for g in by_group if g not in GROUPS)]:
        if group not in by_group:
            continue
        rows = [config_row(path, configs, gpu) for path in by_group[group]]
        total += len(rows)
        lacking_total += sum(lacking for _, lacking in rows)
        lines += [f"### {GROUPS.get(group, group)}", "", *header]
        for row, lacking in rows:
            status = "" if lacking else " (has what it needs here; not run for this page)"
            lines.append("| " + " | ".join(row[:2]) + f" | {row[2]}{status} | " + " | ".join(row[3:]) + " |")
        lines.append("")
    lines.insert(3, f"{lacking_total} of {total} configs need data or a GPU this machine lacks.")
    lines.insert(4, "")
    return lines


# ---- the page ---------------------------------------------------------------------------------

def render(results: Path, configs: Path, rendered_on: str | None = None, gpu: bool | None = None) -> str:
    rendered_on = rendered_on or f"{cpu_name()} ({os.cpu_count()} logical CPUs, {platform.machine()})"
    gpu = has_gpu() if gpu is None else gpu
    present = [b for b in BENCHES if (results / f"{b.key}.json").is_file()]
    missing = [b for b in BENCHES if b not in present]
    lines = ["# Results", "",
             "Generated by `python benchmarks/make_results.py` from `benchmarks/results/*.json` and the tables the "
             "benchmarks wrote next to them; `make bench` reruns the benchmarks on this machine first. Do not edit "
             "by hand.", "",
             f"Rendered on: {rendered_on}; GPU: {'yes' if gpu else 'none'}. Every number below was measured by a "
             "benchmark script on a CPU, on the data its table names (scikit-learn digits, MNIST-1D, the "
             "mnist-t10k split, or random tensors): small stand-ins for the papers' datasets, chosen because they "
             "are what this machine has. Accuracy tables give test accuracy; comparisons within a table share "
             "seeds, epochs and starting weights.", "",
             "**The protocol** (BENCHMARKS.md; `lowbit compare`, `lowbit.runs.protocol`): nothing is chosen on the "
             "test split. Every arm of a comparison gets the same number of tuning trials over the knob it shares with "
             "its baseline (the learning rate or the fine-tune lr, the same grid for both; a method knob such as "
             "SinReQ's λ is searched inside that number by Optuna's TPE), each trial scored on a hold-out of 20% of the "
             "training split while the test split is not even loaded; the chosen setting then runs on every seed from "
             "the same float weights and is scored once on test. Tables give mean ± sd over seeds and the paired "
             "difference against the baseline with a 95% t-interval; \"within noise\" when it covers 0. The sections "
             "marked *Earlier* predate the protocol (some of their choices were made on test figures, and some "
             "baselines had collapsed); they are kept for the record, negative results included.", "",
             f"Benchmarks with results: {', '.join(b.key for b in present) or 'none'}."
             + (f" Not yet run: {', '.join(b.key for b in missing)}." if missing else ""), ""]
    for number, bench in enumerate(BENCHES, 1):
        lines += bench_section(number, bench, results, rendered_on)
    lines += other_results(results)
    lines += config_section(configs, gpu)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"), help="folder of the benchmarks' JSON and .md")
    parser.add_argument("--configs", default=str(ROOT / "configs"), help="folder of experiment configs")
    parser.add_argument("--out", default=str(ROOT / "RESULTS.md"), help="file to write")
    args = parser.parse_args(argv)
    text = render(Path(args.results), Path(args.configs))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
