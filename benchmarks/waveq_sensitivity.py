"""Does WaveQ give more bits to the layers that need them? (issue 19's WaveQ-vs-sensitivity figure)

    python benchmarks/waveq_sensitivity.py [--setups lenet5 conv1d resnet20] [--seeds 0 1 2] [--free-bits 4]

For each setup and seed, on the float model and the layers' sensitivity that benchmarks/releq_bench.py
measured (its hawq arm's folder: the float model trained on train minus a 20% validation split,
and sensitivity.json, Hutchinson traces with 32 probes), run WaveQ (``lowbit waveq``, default
recipe, a budget of ``--free-bits`` on average over the free layers, first and last layers pinned at 8 as WaveQ does, no fine-tune,
scored on the tuning hold-out so the test split is never read)
and take each free layer's learned bitwidth: the continuous β of the last epoch before WaveQ freezes it
at its integer plan (and that rounded plan). Then Spearman's rank correlation, over the free layers, between β and

- Ω(l, 2) = ½ tr(H_l)/n_l ||Q_2(W_l) - W_l||² (the loss increase HAWQ predicts at the fewest bits),
- tr(H_l)/n_l (curvature per weight).

A WaveQ that spends bits where the loss is sensitive has ρ > 0. Writes
benchmarks/results/waveq_sensitivity.{json,md}. A benchmark, not a test: one torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from lowbit.runs.waveq_run import WaveQOptions, run_waveq
from lowbit.search.sensitivity import SENSITIVITY_FILE, Sensitivity
from lowbit.train import QUIET

RESULTS = Path(__file__).parent / "results"
BENCH = Path("runs/search-bench")
PIN_BITS = 8
DATA = {"lenet5": ("mnist-t10k", str(Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k")),
        "conv1d": ("mnist1d", None), "resnet20": ("digits", None)}


def final_beta(folder: Path) -> dict[str, float]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    betas = [r["waveq_beta"] for r in lines if "waveq_beta" in r]
    learned = [b for b in betas if any(float(v) != round(float(v)) for v in b.values())]  # before the freeze
    return {name: float(b) for name, b in (learned or betas)[-1].items()}


def one(model: str, seed: int, free_bits: float, work: Path) -> dict[str, Any]:
    source = BENCH / f"{model}-s{seed}-hawq"
    sensitivity = Sensitivity.load(source / SENSITIVITY_FILE)
    n = len(sensitivity.layers)  # every quantized layer (the bench searches them all)
    budget = (2 * PIN_BITS + free_bits * (n - 2)) / n
    out = work / f"{model}-s{seed}-f{free_bits:g}"
    if not (out / "result.json").exists():
        dataset, data_dir = DATA[model]
        run_waveq(WaveQOptions(model=model, dataset=dataset, data_dir=data_dir, init=str(source / "float"),
                               budget=budget, finetune_epochs=0, tuning_fraction=0.2, seed=seed, threads=1,
                               out=str(out)), reporter=QUIET,
                  command="benchmarks/waveq_sensitivity.py")
    result = json.loads((out / "result.json").read_text())
    beta = final_beta(out)
    rounded = result["waveq"]["beta"]
    names = [n for n in beta if n in sensitivity.layers]
    b_min = min(next(iter(sensitivity.layers.values())).perturbation)
    omega = [sensitivity.omega(n, b_min) for n in names]
    curvature = [sensitivity.layers[n].trace / sensitivity.layers[n].params for n in names]
    betas = [beta[n] for n in names]
    row = {"model": model, "seed": seed, "budget": budget, "layers": names, "beta": betas,
           "bits": [rounded[n] for n in names], "omega": omega, "curvature": curvature,
           "avg_bits": result["avg_bits"]}
    for key, values in (("omega", omega), ("curvature", curvature)):
        rho = spearmanr(betas, values).statistic if len(set(betas)) > 1 else float("nan")
        row[f"rho_{key}"] = float(rho)
    return row


def render(saved: dict[str, Any]) -> None:
    lines = ["# WaveQ's learned bits against the layers' sensitivity (issue 19)", "",
             f"Command: `{saved['meta']['command']}`", "",
             "Spearman's ρ over the free (unpinned) layers between WaveQ's continuous learned bitwidth β and the "
             "layer's Hessian sensitivity measured on the same float model (Ω at 2 bits; tr(H)/n). ρ > 0: "
             "more bits where the loss is more sensitive. Per seed, then the mean. With two free layers (conv1d) ρ is "
             "±1 by construction and with three (LeNet-5) it takes four values; only ResNet-20's 20 free layers say "
             "much.", "",
             "| model | layers | seed | ρ(β, Ω₂) | ρ(β, tr H/n) | β per layer | rounded bits |", "|---|---|---|---|---|---|---|"]
    for r in saved["rows"]:
        lines.append(f"| {r['model']} | {len(r['layers'])} | {r['seed']} | {r['rho_omega']:+.2f} | "
                     f"{r['rho_curvature']:+.2f} | {', '.join(f'{b:.2f}' for b in r['beta'])} | "
                     f"{', '.join(str(b) for b in r['bits'])} |")
    lines += ["", "| model | mean ρ(β, Ω₂) | mean ρ(β, tr H/n) | seeds |", "|---|---|---|---|"]
    for model, s in saved["summary"].items():
        lines.append(f"| {model} | {s['rho_omega']:+.2f} | {s['rho_curvature']:+.2f} | {s['n']} |")
    (RESULTS / "waveq_sensitivity.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", nargs="+", default=["lenet5", "conv1d", "resnet20"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--free-bits", type=float, default=4.0,
                        help="WaveQ's budget: the average bits with the pinned layers at 8 and the rest at this")
    parser.add_argument("--work", default="runs/waveq-sensitivity")
    args = parser.parse_args()
    rows = []
    for model in args.setups:
        for seed in args.seeds:
            rows.append(one(model, seed, args.free_bits, Path(args.work)))
            r = rows[-1]
            print(f"{model} s{seed}: rho(beta, omega) {r['rho_omega']:+.2f}, rho(beta, curvature) "
                  f"{r['rho_curvature']:+.2f}, beta {[round(b, 2) for b in r['beta']]}", flush=True)
    summary = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        summary[model] = {key: statistics.mean(r[key] for r in mine) for key in ("rho_omega", "rho_curvature")}
        summary[model]["n"] = len(mine)
    saved = {"meta": {"command": " ".join(["python", *sys.argv]), "free_bits": args.free_bits}, "rows": rows,
             "summary": summary}
    (RESULTS / "waveq_sensitivity.json").write_text(json.dumps(saved, indent=2) + "\n")
    render(saved)


if __name__ == "__main__":
    main()
