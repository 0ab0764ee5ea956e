"""SinReQ against its base quantizers (BENCHMARKS.md sections 1-2, issue 3).

    python benchmarks/sinreq.py [--epochs 10] [--seeds 0 1 2] [--mnist-dir ../shared/data/mnist-t10k]

1. Choose λ and schedule on a validation split (20% of mnist1d's train split, never test):
   conv1d, DoReFa w2, λ in {0.01, 0.1, 1} x {constant, warmup}, best validation accuracy wins.
2. For conv1d on mnist1d and lenet5 on the mnist-t10k split, each seed: a float run, then DoReFa and
   WRPN at w1/w2/w3 with activations float and 2-bit, each with and without SinReQ, all starting
   from that seed's float weights with the same epochs (lr 0.01).
Writes benchmarks/results/sinreq.json and sinreq.md: accuracy mean and spread per cell and the
share of the gap to float that SinReQ closes, (acc_sinreq - acc_base) / (acc_float - acc_base).
A benchmark, not a test: one torch thread per run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import QUIET

RESULTS = Path(__file__).parent / "results"
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"
LAMBDAS, SCHEDULES = (0.01, 0.1, 1.0), ("constant", "warmup")


def train(tmp: Path, name: str, **kw) -> dict:
    return run_train(TrainOptions(threads=1, batch_size=64, out=str(tmp / name), **kw), reporter=QUIET,
                     command="benchmarks/sinreq.py")


def choose_lambda(tmp: Path, epochs: int) -> tuple[float, str, list[dict]]:
    base = dict(model="conv1d", dataset="mnist1d", epochs=epochs, seed=0, val_fraction=0.2)
    train(tmp, "sel-float", **base)
    q = dict(base, quantizer="dorefa", wbits=2, init=str(tmp / "sel-float"), lr=0.01)
    trials = [{"lambda": None, "schedule": None, "val_accuracy": train(tmp, "sel-base", **q)["val_accuracy"]}]
    for lam, schedule in itertools.product(LAMBDAS, SCHEDULES):
        r = train(tmp, f"sel-{lam}-{schedule}", **q, sinreq=lam, sinreq_schedule=schedule)
        trials.append({"lambda": lam, "schedule": schedule, "val_accuracy": r["val_accuracy"]})
        print(f"  select λ={lam} {schedule}: val {100 * r['val_accuracy']:.2f}%", flush=True)
    best = max(trials[1:], key=lambda t: t["val_accuracy"])
    return best["lambda"], best["schedule"], trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mnist-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--render-only", action="store_true", help="rewrite sinreq.md from sinreq.json")
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads((RESULTS / "sinreq.json").read_text())
        (RESULTS / "sinreq.md").write_text(render(saved["meta"], saved["summary"]))
        return
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lam, schedule, trials = choose_lambda(tmp, args.epochs)
        print(f"chosen on validation: λ={lam}, schedule {schedule}", flush=True)
        for model, dataset, data_dir in (("conv1d", "mnist1d", None), ("lenet5", "mnist-t10k", args.mnist_dir)):
            for seed in args.seeds:
                common = dict(model=model, dataset=dataset, data_dir=data_dir, epochs=args.epochs, seed=seed)
                fl = train(tmp, f"{model}-{seed}-float", **common)
                rows.append({"model": model, "dataset": dataset, "seed": seed, "method": "float",
                             "accuracy": fl["accuracy"]})
                for quantizer, wbits, abits, reg in itertools.product(("dorefa", "wrpn"), (1, 2, 3), (32, 2),
                                                                      (False, True)):
                    name = f"{model}-{seed}-{quantizer}-w{wbits}a{abits}-{'sinreq' if reg else 'base'}"
                    extra = dict(sinreq=lam, sinreq_schedule=schedule) if reg else {}
                    r = train(tmp, name, **common, quantizer=quantizer, wbits=wbits, abits=abits, lr=0.01,
                              init=str(tmp / f"{model}-{seed}-float"), **extra)
                    rows.append({"model": model, "dataset": dataset, "seed": seed, "method": r["method"],
                                 "quantizer": quantizer, "wbits": wbits, "abits": abits, "sinreq": reg,
                                 "accuracy": r["accuracy"], "grid_distance": r["grid_distance"],
                                 "wall_s": r["wall_s"]})
                    print(f"{name:40s} {100 * r['accuracy']:6.2f}%  grid {r['grid_distance']:.3f}", flush=True)
    summary = summarize(rows)
    meta = {"command": " ".join(["python", *sys.argv]), "epochs": args.epochs, "seeds": args.seeds,
            "lambda": lam, "schedule": schedule, "selection": trials, "wall_s": time.perf_counter() - start,
            "data": {"mnist1d": "MNIST-1D, mnist1d.make_dataset defaults (4,000 train / 1,000 test)",
                     "mnist-t10k": "mnist-t10k split: 8,000 train / 2,000 test of the MNIST t10k files"}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sinreq.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=2) + "\n")
    (RESULTS / "sinreq.md").write_text(render(meta, summary))
    print(render(meta, summary))


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        fl = _stats([r["accuracy"] for r in rows if r["model"] == model and r["method"] == "float"])
        for quantizer, wbits, abits in itertools.product(("dorefa", "wrpn"), (1, 2, 3), (32, 2)):
            cell = [r for r in rows if r["model"] == model and r.get("quantizer") == quantizer
                    and r.get("wbits") == wbits and r.get("abits") == abits]
            base = _stats([r["accuracy"] for r in cell if not r["sinreq"]])
            reg = _stats([r["accuracy"] for r in cell if r["sinreq"]])
            gap = fl[0] - base[0]
            out.append({"model": model, "dataset": cell[0]["dataset"], "quantizer": quantizer, "wbits": wbits,
                        "abits": abits, "float": fl[0], "base": base[0], "base_std": base[1], "sinreq": reg[0],
                        "sinreq_std": reg[1], "gap_closed": (reg[0] - base[0]) / gap if gap > 1e-9 else None,
                        "grid_base": statistics.mean(r["grid_distance"] for r in cell if not r["sinreq"]),
                        "grid_sinreq": statistics.mean(r["grid_distance"] for r in cell if r["sinreq"])})
    return out


def render(meta: dict, summary: list[dict]) -> str:
    lines = [f"# SinReQ vs its base quantizer ({meta['epochs']} epochs, seeds {meta['seeds']}, CPU)", "",
             f"Command: `{meta['command']}`. λ = {meta['lambda']} ({meta['schedule']}), chosen on a validation "
             "split of mnist1d's train set. Quantized runs start from the same seed's float run (lr 0.01). "
             "Accuracies: mean ± std over seeds. Gap closed = (SinReQ - base) / (float - base).", "",
             "| model | data | quantizer | w/a | float | base | +SinReQ | gap closed | grid dist base → SinReQ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        gap = "n/a" if s["gap_closed"] is None else f"{100 * s['gap_closed']:+.1f}%"
        lines.append(f"| {s['model']} | {s['dataset']} | {s['quantizer']} | w{s['wbits']}a{s['abits']} | "
                     f"{100 * s['float']:.2f} | {100 * s['base']:.2f} ± {100 * s['base_std']:.2f} | "
                     f"{100 * s['sinreq']:.2f} ± {100 * s['sinreq_std']:.2f} | {gap} | "
                     f"{s['grid_base']:.3f} → {s['grid_sinreq']:.3f} |")
    lines += ["", "Per model and quantizer, over the six w/a cells: mean accuracy change (points) and median gap closed.", "",
              "| model | quantizer | mean Δacc | median gap closed |", "|---|---|---|---|"]
    for model, quantizer in dict.fromkeys((s["model"], s["quantizer"]) for s in summary):
        cells = [s for s in summary if s["model"] == model and s["quantizer"] == quantizer]
        gaps = [s["gap_closed"] for s in cells if s["gap_closed"] is not None]
        delta = statistics.mean(s["sinreq"] - s["base"] for s in cells)
        lines.append(f"| {model} | {quantizer} | {100 * delta:+.2f} | "
                     f"{100 * statistics.median(gaps):+.1f}% |" if gaps else f"| {model} | {quantizer} | {100 * delta:+.2f} | n/a |")
    base_val = meta["selection"][0]["val_accuracy"]
    lines += ["", f"Selection (validation, conv1d DoReFa w2): no SinReQ {100 * base_val:.2f}%; "
              + ", ".join(f"λ={t['lambda']} {t['schedule']} {100 * t['val_accuracy']:.2f}%" for t in meta["selection"][1:])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
