"""DCQ against plain QAT at the same bits and epochs, and 2 worker processes against 1 (BENCHMARKS.md
section 4, issue 5).

    python benchmarks/dcq_bench.py [--seeds 0 1 2] [--teacher-epochs 10] [--epochs 8] [--finetune-epochs 2]
                                   [--mnist-dir ../shared/data/mnist-t10k] [--timing-samples 4096] [--repeats 2]

1. Accuracy. For conv1d on mnist1d and lenet5 on the mnist-t10k split (8,000 train / 2,000 test),
   each seed: a float teacher (``lowbit train``), then
   - DCQ (2 sections, balanced by parameters, independent mode, MSE, ``--epochs`` per section then
     ``--finetune-epochs`` end to end) at binary (twn w1), ternary (twn w2) and 2-bit (dorefa w2);
   - plain QAT from the same float teacher (``lowbit train --init``) for ``epochs + finetune_epochs``
     epochs: DoReFa at the same bits (w1 for binary, w2 for ternary and 2-bit: the paper's
     baseline, at ``lowbit train``'s default output scale ``auto``), and the same quantizer as
     DCQ (twn w1 / w2; for 2-bit DoReFa with the learned output scale DCQ uses, see
     ``lowbit.distill.dcq``), which separates the effect of the training method from that of the
     quantizer.
   Weights only (activations float); first and last layers at 8 bits; SGD lr 0.01 cosine for both
   (not tuned for either). "Same total epochs": each weight sees ``epochs + finetune_epochs`` passes
   over the data in both methods.
2. Timing. resnet20 (random init) on random 32x32x3 data (the synthetic dataset), cut in 2 sections
   balanced by MACs, teacher features cached once; the section phase trained by 1 process at 1
   thread, by 2 worker processes (1 thread each, spawn start included) and by 1 process at 2
   threads, interleaved, ``--repeats`` times each; medians. The trained weights of the 1- and
   2-process runs are compared bitwise.
Writes benchmarks/results/dcq.json and dcq.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowbit.data import ArrayLoader, load_dataset
from lowbit.distill import DCQConfig, TeacherFeatures, make_students, split, split_points, train_sections
from lowbit.models import create_model
from lowbit.plan import Plan
from lowbit.runs.dcq_run import DcqOptions, run_dcq
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import QUIET, TrainConfig

RESULTS = Path(__file__).parent / "results"
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"
SETTINGS = (("binary", "twn", 1), ("ternary", "twn", 2), ("2-bit", "dorefa", 2))
COMMAND = "python benchmarks/dcq_bench.py " + " ".join(sys.argv[1:])


def accuracy_runs(tmp: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    total = args.epochs + args.finetune_epochs
    for model, dataset, data_dir in (("conv1d", "mnist1d", None), ("lenet5", "mnist-t10k", args.mnist_dir)):
        for seed in args.seeds:
            common = dict(dataset=dataset, data_dir=data_dir, seed=seed, threads=1, batch_size=64)
            teacher = tmp / f"{model}-{seed}-float"
            fl = run_train(TrainOptions(model=model, epochs=args.teacher_epochs, out=str(teacher), **common),
                           reporter=QUIET, command=COMMAND)
            rows.append({"model": model, "dataset": fl["dataset"], "seed": seed, "setting": "float",
                         "method": "float", "accuracy": fl["accuracy"], "wall_s": fl["wall_s"]})
            print(f"{model} s{seed} float {100 * fl['accuracy']:.2f}%", flush=True)
            qat = {}
            for quantizer, wbits, scale in (("dorefa", 1, "auto"), ("dorefa", 2, "auto"), ("dorefa", 2, "learned"),
                                            ("twn", 1, "auto"), ("twn", 2, "auto")):
                r = run_train(TrainOptions(model=model, quantizer=quantizer, wbits=wbits, scale=scale, epochs=total,
                                           lr=0.01, init=str(teacher),
                                           out=str(tmp / f"{model}-{seed}-{quantizer}{wbits}-{scale}"), **common),
                              reporter=QUIET, command=COMMAND)
                qat[quantizer, wbits, scale] = r
            for setting, quantizer, wbits in SETTINGS:
                d = run_dcq(DcqOptions(teacher=str(teacher), sections=2, quantizer=quantizer, wbits=wbits,
                                       epochs=args.epochs, finetune_epochs=args.finetune_epochs, lr=0.01,
                                       out=str(tmp / f"{model}-{seed}-dcq-{setting}"), **common),
                            reporter=QUIET, command=COMMAND)
                same = ("qat-twn", qat["twn", wbits, "auto"]) if quantizer == "twn" else (
                    "qat-dorefa-learned", qat["dorefa", wbits, "learned"])
                cells = [("dcq-" + quantizer, d), ("qat-dorefa", qat["dorefa", wbits, "auto"]), same]
                for method, r in cells:
                    row = {"model": model, "dataset": r["dataset"], "seed": seed, "setting": setting,
                           "method": method, "wbits": wbits, "scale": r["quantizer"]["scale"],
                           "accuracy": r["accuracy"], "fp_accuracy": fl["accuracy"],
                           "avg_bits": r["avg_bits"], "wall_s": r["wall_s"]}
                    if method.startswith("dcq"):
                        row.update(stitched_accuracy=d["stitched_accuracy"], split_at=d["split_at"],
                                   section_losses=d["section_losses"], section_wall_s=d["section_wall_s"])
                    rows.append(row)
                print(f"{model} s{seed} {setting:8s} dcq {100 * d['accuracy']:.2f}% (stitched "
                      f"{100 * d['stitched_accuracy']:.2f}%)  "
                      + "  ".join(f"{m} {100 * r['accuracy']:.2f}%" for m, r in cells[1:]), flush=True)
    return rows


def timing(tmp: Path, args: argparse.Namespace) -> dict:
    data = load_dataset("synthetic", seed=0, in_channels=3, input_size=32, n_train=args.timing_samples, n_test=64)
    loader = ArrayLoader(data.train, batch_size=128, shuffle=True, seed=0, mean=data.mean, std=data.std)
    torch.manual_seed(0)
    teacher = create_model("resnet20", in_channels=3, input_size=32).eval()
    sections = split(teacher, sections=2, balance="macs", sample_input=torch.zeros(1, 3, 32, 32))
    t0 = time.perf_counter()
    features = TeacherFeatures(sections, loader, cache_dir=tmp / "resnet20-features")
    cache_s = time.perf_counter() - t0
    train = TrainConfig(epochs=args.timing_epochs, lr=0.01)
    variants = {"1 process, 1 thread": (1, 1), "2 processes, 1 thread each": (2, 1), "1 process, 2 threads": (1, 2)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    states: dict[str, dict] = {}
    threads = torch.get_num_threads()
    for _ in range(args.repeats):
        for name, (workers, n_threads) in variants.items():
            students, _ = make_students(sections, Plan.uniform(2), "dorefa")
            torch.set_num_threads(n_threads if workers == 1 else 1)
            start = time.perf_counter()
            results = train_sections(students, features, DCQConfig(train=train, workers=workers))
            times[name].append(time.perf_counter() - start)
            states[name] = {f"{i}.{k}": v for i, s in enumerate(students) for k, v in s.state_dict().items()}
            print(f"resnet20 timing: {name}: {times[name][-1]:.1f}s (sections {[round(r.wall_s, 1) for r in results]})",
                  flush=True)
    torch.set_num_threads(threads)
    one, two = states["1 process, 1 thread"], states["2 processes, 1 thread each"]
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"model": "resnet20", "data": data.description, "batch_size": 128, "epochs": args.timing_epochs,
            "split_at": split_points(sections),
            "cache_build_s": cache_s, "times_s": times, "median_s": median,
            "speedup_2_processes": median["1 process, 1 thread"] / median["2 processes, 1 thread each"],
            "speedup_2_threads": median["1 process, 1 thread"] / median["1 process, 2 threads"],
            "bitwise_equal_1_vs_2_processes": all(torch.equal(one[k], two[k]) for k in one),
            "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}


def summarise(rows: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["dataset"], r["setting"], r["method"]), []).append(r)
    out = []
    for (model, dataset, setting, method), rs in cells.items():
        accs = [r["accuracy"] for r in rs]
        out.append({"model": model, "dataset": dataset, "setting": setting, "method": method, "n": len(accs),
                    "mean": statistics.mean(accs), "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "min": min(accs), "max": max(accs)})
    return out


def markdown(summary: list[dict], timing_result: dict, args: argparse.Namespace, wall: float) -> str:
    lines = ["# DCQ vs plain QAT (BENCHMARKS.md section 4)", "",
             f"Command: `{COMMAND}`  ",
             f"Seeds {args.seeds}; float teacher {args.teacher_epochs} epochs; DCQ: 2 sections (balanced by "
             "parameters), independent, MSE in units of the teacher features' RMS (DCQ's default), "
             f"{args.epochs} epochs per section + {args.finetune_epochs} fine-tune "
             f"epochs; QAT: {args.epochs + args.finetune_epochs} epochs from the same teacher. Weights quantized, "
             "activations float, first/last layers 8-bit, SGD lr 0.01 cosine, batch 64, 1 torch thread. "
             "qat-dorefa: `lowbit train`'s DoReFa (output scale auto) at the same bits (w1 binary, w2 ternary and "
             "2-bit); qat-twn / qat-dorefa-learned: plain QAT with exactly DCQ's quantizer (DCQ's DoReFa learns "
             "its output scale). "
             f"Total wall {wall / 60:.1f} min on a shared 2-core CPU.", "",
             "| model / data | setting | method | accuracy (mean ± sd) | min..max | n |", "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['model']} / {s['dataset']} | {s['setting']} | {s['method']} | "
                     f"{100 * s['mean']:.2f} ± {100 * s['stdev']:.2f} | {100 * s['min']:.2f}..{100 * s['max']:.2f} "
                     f"| {s['n']} |")
    t = timing_result
    lines += ["", f"## Section training wall time: {t['model']}, {t['data']}", "",
              f"2 sections (split at {', '.join(t['split_at'])}, balanced by MACs), {t['epochs']} epoch(s), batch "
              f"{t['batch_size']}, teacher features cached once ({t['cache_build_s']:.1f} s, not included). "
              f"Interleaved, {args.repeats} repeats, medians; 2-process times include spawning the workers.", "",
              "| variant | median s | all runs s |", "|---|---|---|"]
    for name, median in t["median_s"].items():
        lines.append(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in t['times_s'][name])} |")
    lines += ["", f"Speed-up of 2 processes over 1: {t['speedup_2_processes']:.2f}x; of 2 threads over 1: "
              f"{t['speedup_2_threads']:.2f}x. 1- and 2-process weights bitwise equal: "
              f"{t['bitwise_equal_1_vs_2_processes']}. {t['cpus']} CPUs, load average at the end "
              f"{', '.join(f'{v:.2f}' for v in t['load_average_at_end'])} (the machine is shared).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8, help="DCQ epochs per section")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--mnist-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--timing-samples", type=int, default=4096)
    parser.add_argument("--timing-epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = [] if args.skip_accuracy else accuracy_runs(tmp, args)
        timing_result = timing(tmp, args)
    wall = time.perf_counter() - start
    summary = summarise(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dcq.json").write_text(json.dumps({
        "command": COMMAND, "seeds": args.seeds, "teacher_epochs": args.teacher_epochs, "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs, "summary": summary, "runs": rows, "timing": timing_result,
        "wall_s": wall, "torch": torch.__version__}, indent=2) + "\n")
    (RESULTS / "dcq.md").write_text(markdown(summary, timing_result, args, wall))
    print(markdown(summary, timing_result, args, wall))


if __name__ == "__main__":
    main()
