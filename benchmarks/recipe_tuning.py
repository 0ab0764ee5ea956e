"""How lowbit's default recipes (src/lowbit/recipes.py) were chosen: on validation, never on test.

For every quantizer and both starts (from scratch, from a float run's weights) the same grid of
four recipes is tried on the same cells of two networks that need different things: LeNet-5 on
digits (no batch norm: plain SGD at 0.05 diverges at low bits) and the 1-D CNN on mnist1d (batch
norm after every conv: Adam at 0.001 learns slowly from scratch). Cells: weight bits 1, 2, 4 x
activation bits 32, 2 on LeNet-5, weight bits 1, 2 x activation bits 32, 2 on conv1d (LSQ has no
1-bit weights: 2 and 4; TWN no weights above 2 bits). Each cell is a `lowbit train` run, 10
epochs, with 20% of the training split held out (`--val-fraction 0.2`). For each kind of network
(without batch norm: LeNet-5; with: conv1d) a recipe is scored by its worst cell's validation
accuracy relative to the float network of the same setup (the point of a default is that no cell
collapses), ties broken by the mean. One recipe for both kinds was tried first: the best one
(DoReFa from scratch: SGD 0.05 with a 1-epoch warm-up) still trained DoReFa w2 LeNet-5 to 28%
in the 6-epoch collapse test, so the recipes depend on batch norm. The
test split's accuracy is never read: the script only looks at `val_accuracy`. Float training
keeps its long-standing default (SGD lr 0.05); it was not part of this grid.

    python benchmarks/recipe_tuning.py [--epochs 10] [--seed 0] [--runs-dir DIR] [--quantizers ...]

`--runs-dir` keeps the run folders (a rerun reuses the finished ones). Writes
benchmarks/results/recipe_tuning.json and recipe_tuning.md. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from lowbit.recipes import Recipe, qat_recipe
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter

RESULTS = Path(__file__).parent / "results"
QUANTIZERS = ("dorefa", "wrpn", "pact", "lsq", "twn")
GRID = {
    "scratch": (Recipe("sgd", 0.05), Recipe("sgd", 0.05, 1.0), Recipe("sgd", 0.01), Recipe("adam", 1e-3)),
    "float": (Recipe("sgd", 0.01), Recipe("sgd", 0.002), Recipe("adam", 1e-4), Recipe("adam", 1e-3)),
}
QUIET = Reporter(quiet=True)


SETUPS = (("lenet5", "digits", (1, 2, 4), False), ("conv1d", "mnist1d", (1, 2), True))  # ..., batch norm


def cells(quantizer: str, wbits: tuple[int, ...]) -> list[tuple[int, int]]:
    if quantizer == "lsq":  # no 1-bit weights: 2 bits instead
        wbits = tuple(dict.fromkeys(max(w, 2) for w in wbits))
    if quantizer == "twn":
        wbits = tuple(w for w in wbits if w <= 2)
    return list(itertools.product(wbits, (32, 2)))


def val_accuracy(runs: Path, setup: tuple[str, str], quantizer: str, start: str, recipe: Recipe, wbits: int,
                 abits: int, epochs: int, seed: int) -> float:
    """One run's validation accuracy (reused when its folder already holds a result)."""
    model, dataset = setup
    name = f"{model}-{dataset}-{quantizer}-w{wbits}a{abits}-{start}-{recipe.optimizer}{recipe.lr}"
    name += f"-wu{recipe.warmup_epochs:g}" if recipe.warmup_epochs else ""
    out = runs / name
    if not (out / "result.json").exists():
        run_train(TrainOptions(model=model, dataset=dataset, epochs=epochs, seed=seed, threads=1,
                               quantizer=quantizer, wbits=wbits, abits=abits, optimizer=recipe.optimizer,
                               lr=recipe.lr, warmup_epochs=recipe.warmup_epochs, val_fraction=0.2, out=str(out),
                               init=str(float_run(runs, setup, seed)) if start == "float" else None), reporter=QUIET)
    return float(json.loads((out / "result.json").read_text())["val_accuracy"])


def float_run(runs: Path, setup: tuple[str, str], seed: int) -> Path:
    """The float network of a setup (20 epochs, SGD 0.05), trained once."""
    out = runs / f"{setup[0]}-{setup[1]}-float"
    if not (out / "result.json").exists():
        run_train(TrainOptions(model=setup[0], dataset=setup[1], epochs=20, seed=seed, threads=1, val_fraction=0.2,
                               out=str(out)), reporter=QUIET)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", help="keep (and reuse) the run folders here")
    parser.add_argument("--quantizers", default=",".join(QUANTIZERS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs_dir or tmp)
        float_val = {(m, d): json.loads((float_run(runs, (m, d), args.seed) / "result.json").read_text())["val_accuracy"]
                     for m, d, _, _ in SETUPS}
        rows, chosen = [], []
        for (model, dataset, wbits, batch_norm), quantizer, start in itertools.product(
                SETUPS, args.quantizers.split(","), GRID):
            scored = []
            for recipe in GRID[start]:
                rel = []
                for w, a in cells(quantizer, wbits):
                    acc = val_accuracy(runs, (model, dataset), quantizer, start, recipe, w, a, args.epochs, args.seed)
                    rel.append(acc / float_val[(model, dataset)])
                    rows.append({"setup": f"{model}-{dataset}", "quantizer": quantizer, "start": start,
                                 "recipe": recipe.describe(), "wbits": w, "abits": a, "val_accuracy": acc,
                                 "float_val_accuracy": float_val[(model, dataset)]})
                scored.append((statistics.mean(rel), min(rel), recipe))
                print(f"{model:7s} {quantizer:6s} {start:7s} {recipe.describe():28s} mean {scored[-1][0]:.3f} "
                      f"worst {scored[-1][1]:.3f} (x float)", flush=True)
            mean, worst, best = max(scored, key=lambda s: (s[1], s[0]))
            default = qat_recipe(quantizer, from_float=start == "float", batch_norm=batch_norm)
            chosen.append({"network": f"{model}-{dataset} ({'batch norm' if batch_norm else 'no batch norm'})",
                           "quantizer": quantizer, "start": start, "best": best.describe(), "mean_val": mean,
                           "worst_val": worst, "default": default.describe()})
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": sys.version.split()[0],
            "command": " ".join(["python", *sys.argv]), "epochs": args.epochs, "seed": args.seed,
            "scored_on": "validation (20% of each training split); test never read",
            "score": "worst cell's val accuracy / float val accuracy, ties by the mean"}
    (RESULTS / "recipe_tuning.json").write_text(json.dumps({"meta": meta, "chosen": chosen, "rows": rows},
                                                           indent=2) + "\n")
    lines = [f"# Recipe tuning on validation (LeNet-5/digits and conv1d/mnist1d, {args.epochs} epochs, "
             f"seed {args.seed})", "",
             f"Command: `{meta['command']}`. Scored on {meta['scored_on']}; score: {meta['score']}.", "",
             "| network | quantizer | start | best on validation | mean (x float) | worst cell (x float) | "
             "lowbit's default |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['network']} | {c['quantizer']} | {c['start']} | {c['best']} | {c['mean_val']:.3f} | "
              f"{c['worst_val']:.3f} | {c['default']} |" for c in chosen]
    (RESULTS / "recipe_tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
