"""Robustness matrix (BENCHMARKS.md section 7): every quantizer x weight bits {1, 2, 3, 4, 8} x
activation bits {32, 4, 2}, from scratch and from a float run's weights, at the default recipe
(no --lr, no --optimizer: lowbit.recipes decides), on LeNet-5/digits, conv1d/mnist1d and
ResNet-20/digits. No cell may sit at chance without a README row saying why.

    python benchmarks/robustness.py [--setups lenet5-digits,conv1d-mnist1d,resnet20-digits]
        [--epochs N] [--seed 0] [--runs-dir DIR]

Epochs per setup (`--epochs N` sets them all): LeNet-5/digits 10, conv1d/mnist1d 10 and
ResNet-20/digits 5 (an epoch takes ~0.3 s, ~0.5 s and ~1.6 s here; generating mnist1d ~4 s a run).

Each cell is one `lowbit train` run (one torch thread); from-float cells start from the float
run of the same setup and train the same epochs. Per cell: test accuracy (each cell is scored
once; nothing here is chosen from it), the recipe that produced it, the float reference, the
floor (3x chance at 1-bit weights, 80% of float otherwise) and the run's health verdict. LSQ
does not define 1-bit weights: those cells record the refusal. `--runs-dir` keeps the run
folders and reuses finished ones. Writes benchmarks/results/robustness.json and robustness.md.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.recipes import qat_recipe
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter

RESULTS = Path(__file__).parent / "results"
QUANTIZERS = ("dorefa", "wrpn", "pact", "lsq", "twn")
WBITS, ABITS, STARTS = (1, 2, 3, 4, 8), (32, 4, 2), ("scratch", "float")
SETUPS = {"lenet5-digits": ("lenet5", "digits", 10, False), "conv1d-mnist1d": ("conv1d", "mnist1d", 10, True),
          "resnet20-digits": ("resnet20", "digits", 5, True)}  # (model, dataset, epochs, batch norm)
QUIET = Reporter(quiet=True)


def floor(wbits: int, float_accuracy: float, classes: int = 10) -> float:
    return 3.0 / classes if wbits == 1 else 0.8 * float_accuracy


def run_cell(out: Path, model: str, dataset: str, epochs: int, seed: int, **kw) -> dict:
    if not (out / "result.json").exists():
        run_train(TrainOptions(model=model, dataset=dataset, epochs=epochs, seed=seed, threads=1, out=str(out), **kw),
                  reporter=QUIET)
    return json.loads((out / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--epochs", type=int, help="epochs for every setup (default: each setup's own)")
    parser.add_argument("--quantizers", default=",".join(QUANTIZERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs_dir or tmp)
        for setup in args.setups.split(","):
            model, dataset, epochs, batch_norm = SETUPS[setup]
            epochs = args.epochs or epochs
            float_dir = runs / f"{setup}-float"
            float_accuracy = run_cell(float_dir, model, dataset, epochs, args.seed)["accuracy"]
            print(f"{setup} float {100 * float_accuracy:.1f}%", flush=True)
            for q, w, a, start in itertools.product(args.quantizers.split(","), WBITS, ABITS, STARTS):
                row = {"setup": setup, "quantizer": q, "wbits": w, "abits": a, "start": start, "epochs": epochs,
                       "float_accuracy": float_accuracy, "floor": floor(w, float_accuracy),
                       "recipe": qat_recipe(q, from_float=start == "float", batch_norm=batch_norm).describe()}
                t0 = time.perf_counter()
                try:
                    name = f"{setup}-{q}-w{w}a{a}-{start}-{row['recipe'].replace(' ', '').replace(',', '-')}"
                    r = run_cell(runs / name, model, dataset, epochs, args.seed,
                                 quantizer=q, wbits=w, abits=a, init=str(float_dir) if start == "float" else None)
                    row.update(accuracy=r["accuracy"], healthy=r["health"]["ok"], failed=r["health"]["failed"],
                               avg_bits=r["avg_bits"])
                except LowbitError as exc:
                    row.update(accuracy=None, refused=str(exc))
                row["wall_s"] = time.perf_counter() - t0
                row["above_floor"] = row["accuracy"] is not None and row["accuracy"] >= row["floor"]
                rows.append(row)
                acc = "refused" if row["accuracy"] is None else f"{100 * row['accuracy']:5.1f}%"
                print(f"{setup} {q:6s} w{w}a{a:<2d} {start:7s} {acc}  {row['recipe']}", flush=True)
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": sys.version.split()[0],
            "command": " ".join(["python", *sys.argv]), "seed": args.seed,
            "floors": "3x chance at 1-bit weights, 80% of the float run otherwise"}
    (RESULTS / "robustness.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    trained = [r for r in rows if r["accuracy"] is not None]
    below = sorted((r for r in trained if not r["above_floor"]), key=lambda r: r["accuracy"])
    lines = [f"# Robustness matrix at the default recipes (seed {args.seed}, CPU, one thread)", "",
             f"Command: `{meta['command']}`. Floors: {meta['floors']}. Test accuracy, each cell scored once.", "",
             f"{len(rows)} cells: {len(trained)} trained, {len(rows) - len(trained)} refused (LSQ has no 1-bit "
             f"weights), {len(trained) - len(below)} at or above the floor, {len(below)} below; "
             f"{sum(1 for r in trained if not r['healthy'])} flagged unhealthy by the run itself.", ""]
    if below:
        lines += ["Below the floor:", "", "| setup | quantizer | bits | start | accuracy | floor | recipe | health |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['setup']} | {r['quantizer']} | w{r['wbits']}a{r['abits']} | {r['start']} | "
                  f"{100 * r['accuracy']:.1f}% | {100 * r['floor']:.1f}% | {r['recipe']} | "
                  f"{'ok' if r['healthy'] else ', '.join(r['failed'])} |" for r in below]
        lines.append("")
    for setup in dict.fromkeys(r["setup"] for r in rows):
        part = [r for r in rows if r["setup"] == setup]
        lines += [f"## {setup} ({part[0]['epochs']} epochs; float {100 * part[0]['float_accuracy']:.1f}%)", "",
                  "| quantizer | start | " + " | ".join(f"w{w}a{a}" for w in WBITS for a in ABITS) + " |",
                  "|---|---|" + "---|" * (len(WBITS) * len(ABITS))]
        for q, start in itertools.product(dict.fromkeys(r["quantizer"] for r in part), STARTS):
            cells = {(r["wbits"], r["abits"]): r for r in part if r["quantizer"] == q and r["start"] == start}
            text = [("—" if (w, a) not in cells or cells[(w, a)]["accuracy"] is None else
                     f"{100 * cells[(w, a)]['accuracy']:.0f}{'' if cells[(w, a)]['above_floor'] else ' ✗'}")
                    for w in WBITS for a in ABITS]
            lines.append(f"| {q} | {start} | " + " | ".join(text) + " |")
        lines.append("")
    lines += ["✗: below the floor. —: refused (not defined for that quantizer).", ""]
    (RESULTS / "robustness.md").write_text("\n".join(lines))
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
