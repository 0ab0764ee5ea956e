"""ReLeQ against random search and greedy descent (BENCHMARKS.md section 5, issue 6).

    python benchmarks/releq_bench.py [--seeds 0 1 2] [--max-evals 60] [--finetune-epochs 10] [--finetune-lr LR]

Two setups, every layer searched (no first/last pin, as the paper's LeNet figure of 2.25 average
bits implies), bit choices {2,3,4,5,8}, DoReFa:
- lenet5 on the mnist-t10k split, weight bits;
- conv1d on mnist1d, weight and activation bits (one joint action per layer).
Per seed, the float model is trained once (10 epochs on train minus the 20% validation split)
and every strategy searches from it with the same evaluator settings (200 fine-tune steps on
2,000 training samples, accuracy on the validation split, never test), the same reward and the
same number of plan evaluations; each strategy has its own cache, so each pays for its own
evaluations. The best plan by reward then gets a 10-epoch fine-tune (lr 0.002 for LeNet-5, 0.01
for conv1d, chosen from the measurements in ``setups``) and one test accuracy. A rerun into the
same --work folder resumes every search from its cache and agent state (no new evaluations),
redoes only the final fine-tunes and keeps the search wall times of the run that searched.
Writes benchmarks/results/releq.{json,md}. A benchmark, not a test: one torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lowbit.runs.search_run import SearchOptions, run_search
from lowbit.train import QUIET

RESULTS = Path(__file__).parent / "results"
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"
STRATEGIES = ("releq", "random", "greedy")


def setups(mnist_dir: str) -> list[dict]:
    # final fine-tune lr per setup, as measured (10 epochs): LeNet-5 weights-only 97.0% at 0.002 vs
    # 95.7% at 0.01 (5 epochs); conv1d with 2-3-bit activations 73% at 0.002 vs 84% at 0.01
    return [dict(model="lenet5", dataset="mnist-t10k", data_dir=mnist_dir, search_acts=False, finetune_lr=0.002),
            dict(model="conv1d", dataset="mnist1d", data_dir=None, search_acts=True, finetune_lr=0.01)]


def row(result: dict, setup: dict, seed: int) -> dict:
    search = result["search"]
    return {"model": setup["model"], "dataset": setup["dataset"], "search_acts": setup["search_acts"],
            "seed": seed, "strategy": search["strategy"], "accuracy": result["accuracy"],
            "fp_accuracy": result["fp_accuracy"], "accuracy_loss": result["accuracy_loss"],
            "avg_bits": result["avg_bits"], "weighted_bits": result["weighted_bits"],
            "weight_bits": result["weight_bits"], "act_bits": result["act_bits"],
            "evaluations": search["evaluations"], "cache_hits": search["cache_hits"],
            "best_reward": search["best"]["reward"], "best_val_accuracy": search["best"]["val_accuracy"],
            "hypervolume": search["hypervolume"], "hypervolume_ref": search.get("hypervolume_ref"),
            "pareto_size": len(search["pareto"]), "search_wall_s": search["wall_s"], "wall_s": result["wall_s"],
            "episodes": search.get("episodes"), "bit_serial_speedup": result["compute"]["bit_serial_speedup"],
            "bit_fusion_speedup": result["compute"]["bit_fusion_speedup"]}


def summarize(rows: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["dataset"], r["strategy"]), []).append(r)

    def ms(values: list[float]) -> tuple[float, float]:
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    out = []
    for (model, dataset, strategy), rs in cells.items():
        entry = {"model": model, "dataset": dataset, "strategy": strategy, "seeds": len(rs)}
        for key in ("accuracy", "accuracy_loss", "avg_bits", "hypervolume", "best_reward", "evaluations",
                    "search_wall_s", "bit_serial_speedup", "bit_fusion_speedup"):
            entry[f"{key}_mean"], entry[f"{key}_sd"] = ms([float(r[key]) for r in rs])
        entry["plans"] = [", ".join(f"{r['weight_bits'][n]}/{r['act_bits'][n]}" for n in r["weight_bits"])
                          for r in rs]
        out.append(entry)
    return out


def render(saved: dict) -> None:
    m = saved["meta"]
    lines = ["# ReLeQ vs random search vs greedy descent", "", f"Command: `{m['command']}`", "",
             f"Seeds {m['seeds']}; {m['max_evals']} plan evaluations per search (200-step fine-tune on 2,000 "
             "training samples, validation accuracy); best plan by reward fine-tuned "
             f"{m['finetune_epochs']} epochs (lr {m.get('finetune_lr')}), then test accuracy. All layers "
             f"searched, choices {m['bit_choices']}; "
             "conv1d searches weight and activation bits. Hypervolume: area dominated by the Pareto set of "
             "(validation accuracy, average bits) up to the reference (b_max bits, accuracy 0). "
             "Mean ± sd over seeds; CPU, 1 thread.", "",
             "| model | data | strategy | test acc % | loss vs float (pts) | avg bits | hypervolume | best reward "
             "| evals | search s | bit-serial x | bit-fusion x | plans (w/a per layer, one per seed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in saved["summary"]:
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['strategy']} | {100 * r['accuracy_mean']:.2f} ± "
            f"{100 * r['accuracy_sd']:.2f} | {100 * r['accuracy_loss_mean']:.2f} ± "
            f"{100 * r['accuracy_loss_sd']:.2f} | "
            f"{r['avg_bits_mean']:.2f} ± {r['avg_bits_sd']:.2f} | {r['hypervolume_mean']:.3f} ± "
            f"{r['hypervolume_sd']:.3f} | {r['best_reward_mean']:.3f} | {r['evaluations_mean']:.0f} | "
            f"{r['search_wall_s_mean']:.0f} | {r['bit_serial_speedup_mean']:.2f} | "
            f"{r['bit_fusion_speedup_mean']:.2f} | {'<br>'.join(r['plans'])} |")
    (RESULTS / "releq.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-evals", type=int, default=60)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, help="override the per-setup fine-tune lr")
    parser.add_argument("--bit-choices", default="2,3,4,5,8")
    parser.add_argument("--mnist-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--work", default="/tmp/lowbit-releq-bench", help="run folders (kept for reports)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        render(json.loads((RESULTS / "releq.json").read_text()))
        return
    work = Path(args.work)
    rows = []
    saved_path = RESULTS / "releq.json"
    searched_s = ({(r["model"], r["seed"], r["strategy"]): r["search_wall_s"]
                   for r in json.loads(saved_path.read_text())["rows"]} if saved_path.exists() else {})
    for setup in setups(args.mnist_dir):
        for seed in args.seeds:
            float_dir = None
            for strategy in STRATEGIES:
                out = work / f"{setup['model']}-s{seed}-{strategy}"
                options = SearchOptions(strategy=strategy, model=setup["model"], dataset=setup["dataset"],
                                        data_dir=setup["data_dir"], init=float_dir, search_acts=setup["search_acts"],
                                        bit_choices=args.bit_choices, pin_first_last=False,
                                        max_evals=args.max_evals, finetune_epochs=args.finetune_epochs,
                                        finetune_lr=args.finetune_lr or setup["finetune_lr"],
                                        seed=seed, threads=1, out=str(out), resume=out.exists())
                result = run_search(options, reporter=QUIET, command="benchmarks/releq_bench.py")
                float_dir = float_dir or str(out / "float")
                rows.append(row(result, setup, seed))
                if options.resume and not result["search"]["new_evaluations"]:  # replayed: the first run's cost
                    rows[-1]["search_wall_s"] = searched_s.get((setup["model"], seed, strategy),
                                                               rows[-1]["search_wall_s"])
                r = rows[-1]
                print(f"{setup['model']} s{seed} {strategy:7s} test {100 * r['accuracy']:.2f}% "
                      f"(loss {100 * r['accuracy_loss']:.2f}) avg bits {r['avg_bits']:.2f} "
                      f"hv {r['hypervolume']:.3f} evals {r['evaluations']} {r['search_wall_s']:.0f}s "
                      f"{list(r['weight_bits'].values())}", flush=True)
    meta = {"command": " ".join(["python", *sys.argv]), "seeds": args.seeds, "max_evals": args.max_evals,
            "finetune_epochs": args.finetune_epochs,
            "finetune_lr": args.finetune_lr or {s["model"]: s["finetune_lr"] for s in setups(args.mnist_dir)},
            "bit_choices": args.bit_choices, "threads": 1,
            "device": "cpu", "pin_first_last": False}
    saved = {"meta": meta, "rows": rows, "summary": summarize(rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "releq.json").write_text(json.dumps(saved, indent=2) + "\n")
    render(saved)


if __name__ == "__main__":
    main()
