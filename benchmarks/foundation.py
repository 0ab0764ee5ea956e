"""Foundation accuracy table: float vs DoReFa w2, DoReFa w2a2, WRPN w2 (from the float weights).

Float runs use SGD lr 0.05; quantized runs fine-tune from the float weights at lr 0.01 (WRPN w2
on LeNet-5 collapses to chance at 0.05 on the mnist-t10k split: measured, see the issue notes).
One torch thread per run.

    python benchmarks/foundation.py [--epochs 10] [--seed 0] [--mnist-dir ../shared/data/mnist-t10k]

Writes benchmarks/results/foundation.json and foundation.md. Each quantized run starts from the
float run's weights (--init) and trains the same number of epochs. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter

RESULTS = Path(__file__).parent / "results"
CASES = [("float", {}), ("dorefa w2", {"quantizer": "dorefa", "wbits": 2}),
         ("dorefa w2a2", {"quantizer": "dorefa", "wbits": 2, "abits": 2}), ("wrpn w2", {"quantizer": "wrpn", "wbits": 2})]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"))
    args = parser.parse_args()
    setups = [("lenet5", "mnist-t10k", args.mnist_dir, CASES), ("conv1d", "mnist1d", None, CASES),
              ("lenet5", "digits", None, CASES)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, dataset, data_dir, cases in setups:
            float_dir = None
            for label, extra in cases:
                out = Path(tmp) / f"{model}-{dataset}-{label.replace(' ', '-')}"
                options = TrainOptions(model=model, dataset=dataset, data_dir=data_dir, epochs=args.epochs,
                                       seed=args.seed, batch_size=64, out=str(out),
                                       init=float_dir if extra else None, threads=1,
                                       lr=0.01 if extra else None, **extra)
                r = run_train(options, reporter=Reporter(quiet=True), command="benchmarks/foundation.py")
                float_dir = float_dir or str(out)
                rows.append({"model": model, "dataset": r["dataset"], "data": r["data"], "method": label,
                             "accuracy": r["accuracy"], "avg_bits": r["avg_bits"], "size_bytes": r["size_bytes"],
                             "wall_s": r["wall_s"], "epochs": args.epochs, "seed": args.seed})
                print(f"{model:8s} {dataset:11s} {label:12s} acc {100 * r['accuracy']:6.2f}%  "
                      f"{r['wall_s']:6.1f}s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": sys.version.split()[0],
            "command": " ".join(["python", *sys.argv])}
    (RESULTS / "foundation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Foundation: accuracy at 2 bits ({args.epochs} epochs, seed {args.seed}, CPU)", "",
             f"Command: `{meta['command']}`", "",
             "| model | data | method | test acc | avg bits | packed bytes | wall s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['dataset']} | {r['method']} | {100 * r['accuracy']:.2f}% | {r['avg_bits']:.2f} "
              f"| {r['size_bytes']:,} | {r['wall_s']:.1f} |" for r in rows]
    (RESULTS / "foundation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
