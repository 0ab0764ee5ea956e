"""WaveQ's learned plans against uniform plans (BENCHMARKS.md section 3, issue 4).

    python benchmarks/waveq_bench.py [--seeds 0 1 2] [--epochs 10] [--finetune-epochs 5]

For conv1d on mnist1d and lenet5 on the mnist-t10k split, each seed: a float run (``--float-epochs``),
then from those float weights, all with DoReFa and the same total epochs (epochs + finetune-epochs):
- uniform QAT at w2, w3, w4 (first/last layers pinned at 8, as every plan here);
- WaveQ with the paper's bit pressure (sum of β) and with budgets equal to the uniform w2 and w3
  plans' average bits, then the quantized fine-tune at the learned integer plan.
Learning rate 0.01 everywhere after the float run. Writes benchmarks/results/waveq.{json,md} and
waveq.png (accuracy against average bits, mean over seeds with the spread as error bars).
A benchmark, not a test: one torch thread per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.runs.waveq_run import WaveQOptions, run_waveq
from lowbit.train import QUIET

RESULTS = Path(__file__).parent / "results"
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"
UNIFORM_BITS = (2, 3, 4)


def setups(mnist_dir: str) -> list[dict]:
    # uniform w2/w3 average bits with the 8-bit pins: conv1d (4 layers) 5.0/5.5, lenet5 (5 layers) 4.4/5.0
    return [dict(model="conv1d", dataset="mnist1d", data_dir=None, budgets=(5.0, 5.5)),
            dict(model="lenet5", dataset="mnist-t10k", data_dir=mnist_dir, budgets=(4.4, 5.0))]


def summarize(rows: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["dataset"], r["method"]), []).append(r)
    out = []
    for (model, dataset, method), rs in cells.items():
        acc = [r["accuracy"] for r in rs]
        bits = [r["avg_bits"] for r in rs]
        out.append({"model": model, "dataset": dataset, "method": method, "seeds": len(rs),
                    "acc_mean": statistics.mean(acc), "acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "avg_bits_mean": statistics.mean(bits), "avg_bits_min": min(bits), "avg_bits_max": max(bits),
                    "weighted_bits_mean": statistics.mean(r["weighted_bits"] for r in rs),
                    "plans": sorted({json.dumps(r["weight_bits"]) for r in rs}),
                    "wall_s_mean": statistics.mean(r["wall_s"] for r in rs)})
    return out


def render(saved: dict) -> None:
    lines = ["# WaveQ learned plans vs uniform DoReFa plans", "",
             f"Command: `{saved['meta']['command']}`", "",
             f"Seeds {saved['meta']['seeds']}; float {saved['meta']['float_epochs']} epochs; every quantized run "
             f"{saved['meta']['epochs']} + {saved['meta']['finetune_epochs']} epochs from the float weights "
             "(WaveQ: WaveQ phase + fine-tune; uniform: QAT for the same total). Accuracy = test accuracy, "
             "mean ± sd over seeds. Average bits over all quantized layers, first/last pinned at 8.", "",
             "| model | data | method | test acc % | avg bits | weighted bits | plans (weight bits per layer) |",
             "|---|---|---|---|---|---|---|"]
    for r in saved["summary"]:
        plans = "<br>".join(", ".join(f"{v}" for v in json.loads(p).values()) for p in r["plans"])
        lines.append(f"| {r['model']} | {r['dataset']} | {r['method']} | {100 * r['acc_mean']:.2f} ± "
                     f"{100 * r['acc_sd']:.2f} | {r['avg_bits_mean']:.2f} | {r['weighted_bits_mean']:.2f} | {plans} |")
    (RESULTS / "waveq.md").write_text("\n".join(lines) + "\n")
    plot(saved["summary"])


def plot(summary: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["model"], r["dataset"]) for r in summary})
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), squeeze=False)
    for ax, (model, dataset) in zip(axes.flat, pairs):
        rows = [r for r in summary if r["model"] == model and r["dataset"] == dataset]
        uniform = sorted((r for r in rows if r["method"].startswith("uniform")), key=lambda r: r["avg_bits_mean"])
        ax.errorbar([r["avg_bits_mean"] for r in uniform], [100 * r["acc_mean"] for r in uniform],
                    yerr=[100 * r["acc_sd"] for r in uniform], marker="o", label="uniform DoReFa w2/w3/w4")
        for r in rows:
            if r["method"].startswith("waveq"):
                ax.errorbar([r["avg_bits_mean"]], [100 * r["acc_mean"]], yerr=[100 * r["acc_sd"]], marker="*",
                            markersize=12, linestyle="none", label=r["method"])
        ax.set_xlabel("average weight bits (pins included)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{model} on {dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "waveq.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--mnist-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        render(json.loads((RESULTS / "waveq.json").read_text()))
        return
    rows = []
    total = args.epochs + args.finetune_epochs
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for setup in setups(args.mnist_dir):
            data = dict(model=setup["model"], dataset=setup["dataset"], data_dir=setup["data_dir"])
            for seed in args.seeds:
                tag = f"{setup['model']}-s{seed}"
                run_train(TrainOptions(**data, epochs=args.float_epochs, seed=seed, threads=1,
                                       out=str(tmp / f"{tag}-float")), reporter=QUIET, command="waveq_bench")
                init = str(tmp / f"{tag}-float")
                for bits in UNIFORM_BITS:
                    r = run_train(TrainOptions(**data, epochs=total, seed=seed, threads=1, quantizer="dorefa",
                                               wbits=bits, init=init, lr=0.01, out=str(tmp / f"{tag}-u{bits}")),
                                  reporter=QUIET, command="waveq_bench")
                    rows.append({**_row(r, setup), "method": f"uniform w{bits}"})
                    print(f"{tag} uniform w{bits}: {100 * r['accuracy']:.2f}% at {r['avg_bits']:.2f} bits", flush=True)
                for budget in (None, *setup["budgets"]):
                    name = "waveq sum" if budget is None else f"waveq budget {budget:g}"
                    t0 = time.perf_counter()
                    r = run_waveq(WaveQOptions(**data, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                                               budget=budget, seed=seed, threads=1, init=init,
                                               out=str(tmp / f"{tag}-{name.replace(' ', '-')}")),
                                  reporter=QUIET, command="waveq_bench")
                    rows.append({**_row(r, setup), "method": name})
                    print(f"{tag} {name}: {100 * r['accuracy']:.2f}% at {r['avg_bits']:.2f} bits "
                          f"{list(r['weight_bits'].values())} ({time.perf_counter() - t0:.0f}s)", flush=True)
    meta = {"command": " ".join(["python", *sys.argv]), "seeds": args.seeds, "float_epochs": args.float_epochs,
            "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "threads": 1, "device": "cpu",
            "lr_after_float": 0.01}
    saved = {"meta": meta, "rows": rows, "summary": summarize(rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "waveq.json").write_text(json.dumps(saved, indent=2) + "\n")
    render(saved)


def _row(result: dict, setup: dict) -> dict:
    return {"model": setup["model"], "dataset": setup["dataset"], "seed": result["seed"],
            "accuracy": result["accuracy"], "avg_bits": result["avg_bits"], "weighted_bits": result["weighted_bits"],
            "weight_bits": result["weight_bits"], "wall_s": result["wall_s"],
            "fp_accuracy": result.get("fp_accuracy"), "waveq": result.get("waveq")}


if __name__ == "__main__":
    main()
