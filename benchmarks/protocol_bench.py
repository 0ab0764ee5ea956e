"""SinReQ, WaveQ, DCQ and ReLeQ rerun under the comparison protocol (BENCHMARKS.md "The protocol";
issue "Fair comparisons"), through ``lowbit.runs.protocol.compare`` (what ``lowbit compare`` runs).

    python benchmarks/protocol_bench.py [--only waveq sinreq dcq releq] [--models conv1d lenet5]
                                        [--seeds 0 1 2] [--runs-dir runs/protocol]

Per model (conv1d on mnist1d, lenet5 on the mnist-t10k split) and seed, a float run (10 epochs,
the float recipe) that every quantized arm starts from. Each comparison pairs a method with its
baseline; both get the same tuning grid over the knob they share (the learning rate or the
fine-tune lr) and the same number of trials (a method knob such as SinReQ's λ is searched inside
that number by Optuna's TPE); every trial is scored on the tuning hold-out (20% of train, test never
loaded); the chosen settings then run on every seed and are scored once on test. ReLeQ and its
comparators tune nothing (the same default fine-tune for all, 60 plan evaluations each).

Writes benchmarks/results/protocol_<method>.{json,md}; ``python benchmarks/make_results.py``
puts them into RESULTS.md. A benchmark, not a test: one torch thread per run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.report.comparison import comparison_table
from lowbit.runs.protocol import Arm, Protocol, compare, run_command, seeded
from lowbit.train import Reporter

RESULTS = Path(__file__).parent / "results"
MNIST_T10K = str(Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k")
SETUPS = {"conv1d": {"model": "conv1d", "dataset": "mnist1d"},
          "lenet5": {"model": "lenet5", "dataset": "mnist-t10k", "data_dir": MNIST_T10K}}
LR_GRID = [0.002, 0.005, 0.01, 0.02]  # the knob every arm shares (lr or fine-tune lr)
TRIALS = 4


def float_dir(runs: Path, model: str) -> str:
    return str(runs / "float" / f"{model}-s{{seed}}")


def waveq_pairs(setup: dict[str, Any], init: str) -> list[tuple[str, list[Arm]]]:
    """WaveQ at a budget equal to a uniform plan's average bits against that uniform plan, both
    with DoReFa and a learned scale, the same 15 epochs from the float weights, and the same
    fine-tune lr grid (WaveQ: its fine-tune lr; uniform: the lr of its 15 epochs). A third arm is
    the uniform plan at ``lowbit train``'s own defaults from float weights (output scale auto, the
    recipe's optimizer), lr tuned on the same grid: the baseline a user gets without asking."""
    budgets = {"conv1d": (5.0, 5.5), "lenet5": (4.4, 5.0)}[setup["model"]]
    pairs = []
    for wbits, budget in zip((2, 3), budgets):
        uniform = Arm(f"uniform-w{wbits}", "train", {
            **setup, "quantizer": "dorefa", "wbits": wbits, "scale": "learned", "init": init, "epochs": 15,
            "optimizer": "sgd", "warmup_epochs": 0.0, "threads": 1}, {"lr": LR_GRID})
        waveq = Arm(f"waveq-b{budget:g}", "waveq", {**setup, "quantizer": "dorefa", "budget": budget, "init": init,
                                                    "epochs": 10, "finetune_epochs": 5, "threads": 1},
                    {"finetune_lr": LR_GRID})
        default = Arm(f"uniform-w{wbits}-auto", "train", {**setup, "quantizer": "dorefa", "wbits": wbits,
                                                          "init": init, "epochs": 15, "threads": 1}, {"lr": LR_GRID})
        pairs.append((f"w{wbits}", [uniform, waveq, default]))
    return pairs


def sinreq_pairs(setup: dict[str, Any], init: str) -> list[tuple[str, list[Arm]]]:
    """SinReQ on DoReFa and WRPN at 2-bit weights (float and 2-bit activations), 10 epochs from the
    float weights; the base tunes lr, SinReQ tunes lr and λ with the same number of trials."""
    pairs = []
    for quantizer in ("dorefa", "wrpn"):
        for abits in (32, 2):
            base = {**setup, "quantizer": quantizer, "wbits": 2, "abits": abits, "init": init, "epochs": 10,
                    "optimizer": "sgd", "warmup_epochs": 0.0, "threads": 1}
            pairs.append((f"{quantizer}-w2a{abits}", [
                Arm(quantizer, "train", base, {"lr": LR_GRID}),
                Arm(f"{quantizer}+sinreq", "train", base, {"lr": LR_GRID, "sinreq": [0.001, 0.01, 0.1]})]))
    return pairs


def dcq_pairs(setup: dict[str, Any], init: str) -> list[tuple[str, list[Arm]]]:
    """DCQ (2 sections, 8 epochs each + 2 fine-tune epochs) against QAT with the same quantizer
    (TWN) for 10 epochs from the same float weights, binary and ternary weights; both tune lr."""
    pairs = []
    for wbits, name in ((1, "binary"), (2, "ternary")):
        qat = Arm("qat-twn", "train", {**setup, "quantizer": "twn", "wbits": wbits, "init": init, "epochs": 10,
                                       "optimizer": "sgd", "warmup_epochs": 0.0, "threads": 1}, {"lr": LR_GRID})
        dcq = Arm("dcq-twn", "dcq", {**setup, "model": None, "teacher": init, "quantizer": "twn", "wbits": wbits,
                                     "sections": 2, "epochs": 8, "finetune_epochs": 2, "threads": 1},
                  {"lr": LR_GRID})
        pairs.append((name, [qat, dcq]))
    return pairs


def releq_pairs(setup: dict[str, Any], init: str) -> list[tuple[str, list[Arm]]]:
    """ReLeQ (MLP policy) against random search and greedy descent: 60 plan evaluations each, the
    same evaluator, the same default final fine-tune (nothing tuned); conv1d searches activations too."""
    acts = {"search_acts": True} if setup["model"] == "conv1d" else {}
    common = {**setup, "init": init, "max_evals": 60, "policy": "mlp", "threads": 1, **acts}
    arms = [Arm(name, "search", {**common, "strategy": name}) for name in ("releq", "random", "greedy")]
    return [("strategies", arms)]


STUDIES = {"waveq": waveq_pairs, "sinreq": sinreq_pairs, "dcq": dcq_pairs, "releq": releq_pairs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    parser.add_argument("--models", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/protocol")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md files from the saved JSON")
    args = parser.parse_args()
    if args.render_only:
        for study in args.only:
            render(study, json.loads((RESULTS / f"protocol_{study}.json").read_text()), Path(args.runs_dir))
        return 0
    torch.set_num_threads(1)
    runs = Path(args.runs_dir)
    protocol = Protocol(seeds=tuple(args.seeds), trials=TRIALS)
    reporter = Reporter()
    for study in args.only:
        start = time.perf_counter()
        out_json = RESULTS / f"protocol_{study}.json"
        comparisons: dict[str, Any] = {}
        for model in args.models:
            setup = SETUPS[model]
            for seed in args.seeds:  # the float runs every arm starts from
                run_command("train", seeded({**setup, "epochs": 10, "threads": 1}, seed),
                            Path(float_dir(runs, model).format(seed=seed)), reporter)
            for label, arms in STUDIES[study](setup, float_dir(runs, model)):
                key = f"{model}-{label}"
                reporter.log(f"[bold]{study} {key}[/]")
                comparisons[key] = compare(arms, arms[0].name, protocol, runs / study / key, reporter=reporter)
        # read again just before writing: another process may have added other models' comparisons
        saved = json.loads(out_json.read_text()) if out_json.exists() else {"comparisons": {}}
        saved["comparisons"].update(comparisons)
        command = "python " + " ".join(sys.argv)
        earlier = [c for c in saved.get("meta", {}).get("command", "").split("; ") if c and c != command]
        saved["meta"] = {"command": "; ".join([*earlier, command]), "torch": torch.__version__,
                         "machine": platform.processor() or platform.machine(), "threads": 1,
                         "seeds": args.seeds, "trials": TRIALS, "lr_grid": LR_GRID, "tuning_fraction": 0.2,
                         "wall_s": {**saved.get("meta", {}).get("wall_s", {}),
                                    ",".join(args.models): time.perf_counter() - start}}
        out_json.write_text(json.dumps(saved, indent=1))
        render(study, saved, runs)
    return 0


NOTES = {
    "waveq": "WaveQ's arm is WaveQ phase (10 epochs) + fine-tune (5 epochs) at the learned plan; the uniform arms "
             "train 15 epochs from the same float weights with DoReFa and a learned scale (WaveQ's fine-tune "
             "quantizer) and lr tuned on the same grid as WaveQ's fine-tune lr; uniform-wK-auto is `lowbit train`'s "
             "own default (scale auto, the recipe's optimizer), lr tuned on the same grid. Where WaveQ's plans equal "
             "the uniform plan (the plans column), the difference measures its training phase, not learned bits.",
    "sinreq": "Both arms start from the same float weights and train 10 epochs; the base tunes lr over 4 values, "
              "SinReQ gets the same 4 trials over lr x λ (12 points, Optuna TPE picks 4), so it explores lr less.",
    "dcq": "qat-twn: `lowbit train` with TWN (the quantizer DCQ's students use) for 10 epochs; dcq-twn: 2 sections x "
           "8 epochs + 2 end-to-end fine-tune epochs; both from the same float weights, lr tuned on the same grid.",
    "releq": "ReLeQ with the MLP PPO policy; all three strategies: 60 plan evaluations (200-step fine-tunes on 2,000 "
             "training samples scored on a validation split of train), first/last layers pinned at 8 bits, conv1d "
             "searches activation bits too; the best plan by reward gets the default 10-epoch fine-tune (lr 0.002, "
             "not tuned: the same for every strategy) and one test score.",
}


def hypervolume_table(study_dir: Path, comparison: dict[str, Any]) -> list[str]:
    """The searches' Pareto hypervolume per strategy, paired against the baseline (ReLeQ)."""
    from lowbit.report.stats import Summary, paired_difference

    volumes = {}
    for arm in comparison["arms"]:
        volumes[arm["name"]] = {int(seed): json.loads((study_dir / "final" / arm["name"] / f"s{seed}" /
                                                        "result.json").read_text())["search"]["hypervolume"]
                                for seed in arm["test_accuracy"]}
    base = comparison["baseline"]
    lines = ["", "| strategy | hypervolume (mean ± sd) | vs " + base + " |", "|---|---|---|"]
    for name, values in volumes.items():
        s = Summary.of(list(values.values()))
        diff = None if name == base else paired_difference(values, volumes[base]).to_dict()
        text = "baseline"
        if diff:
            verdict = "within noise" if diff["within_noise"] else ("larger" if diff["mean"] > 0 else "smaller")
            interval = f"[{diff['low']:+.3f}, {diff['high']:+.3f}]" if diff["low"] is not None else ""
            text = f"{diff['mean']:+.3f} {interval}, {verdict}"
        lines.append(f"| {name} | {s.mean:.3f} ± {s.sd:.3f} | {text} |")
    return lines + [""]


def against_default(comparison: dict[str, Any]) -> list[str]:
    """WaveQ against the uniform plan at lowbit train's own defaults (the third arm), paired by seed."""
    from lowbit.report.comparison import difference_text
    from lowbit.report.stats import paired_difference

    arms = {a["name"]: a for a in comparison["arms"]}
    waveq = next((a for n, a in arms.items() if n.startswith("waveq")), None)
    default = next((a for n, a in arms.items() if n.endswith("-auto")), None)
    if waveq is None or default is None:
        return []
    diff = paired_difference({int(k): v for k, v in waveq["test_accuracy"].items()},
                             {int(k): v for k, v in default["test_accuracy"].items()})
    text = difference_text(diff.to_dict())
    return [f"{waveq['name']} against {default['name']} (points, paired by seed): {text}.", ""]


def render(study: str, saved: dict[str, Any], runs: Path = Path("runs/protocol")) -> None:
    lines = [f"# {study} under the comparison protocol", "", f"Command: `{saved['meta']['command']}`", "",
             NOTES[study], ""]
    for key, comparison in saved["comparisons"].items():
        lines += [f"## {key}", "", comparison_table(comparison)]
        if study == "releq" and (runs / study / key).is_dir():
            lines += hypervolume_table(runs / study / key, comparison)
        if study == "waveq":
            lines += against_default(comparison)
    (RESULTS / f"protocol_{study}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
