"""Mixed-precision search strategies under the protocol (issue 19; BENCHMARKS.md section 5 and the
protocol of issue 16): ReLeQ (MLP and LSTM policies, the informative state), random, greedy,
Optuna's TPE, HAWQ (its integer program, then evaluations) and HAWQ with no evaluations.

    python benchmarks/releq_bench.py [--setups lenet5 conv1d resnet20] [--seeds 0 1 2 3 4]
        [--arms ...] [--max-evals 16] [--part NAME]   # then: --render-only

Setups, every layer searched (no first/last pin), DoReFa, bit choices {2,3,4,5,8}:
- lenet5 on mnist-t10k, weight bits, budget in average weight bits;
- conv1d on mnist1d, weight and activation bits (one joint action per layer), budget in BOPs;
- resnet20 on digits, weight bits, budget in average weight bits.

Protocol. Per seed the float model is trained once (train minus a 20% validation split; the test
split is never read before the final numbers) and every arm searches from it with the same
evaluator (short fine-tunes on a training subset, accuracy on the validation split), the same
reward and the same number of new plan evaluations (``--max-evals``, each arm its own cache, so
each pays for its own). Every arm runs under the same cost budget, "4 bits": the cost of the plan
with every searched layer at 4 bits (weights and, on conv1d, activations) in the setup's unit.
HAWQ's evaluations go to its integer program's sweep of budgets down to the cheapest plan; HAWQ-0
is the program's optimum with no evaluation at all. Nothing is tuned: every setting is the
library's default recipe, fixed before any test number was seen, except the final fine-tune's length:
raised from 3 to 10 epochs for every arm after the first conv1d test figures (63-67% against a 95%
float model); equal for all arms, so no arm is favoured, but the absolute accuracies are not test-blind.

Numbers per (setup, seed, arm):
- hypervolume of the (validation accuracy, average bits) Pareto set of the evaluated plans up to
  the reference (8 bits, accuracy 0) -- not defined for HAWQ-0 (no evaluations);
- best test accuracy at 3.0 and at 4.0 bits: the evaluated plan with the highest validation
  accuracy whose cost is within the 3-bit (4-bit) budget (HAWQ-0: the program's optimum under it),
  fine-tuned ``--finetune-epochs`` from the float weights (SGD, the library's quantized fine-tune
  recipe) and scored once on test; a plan already fine-tuned for the same seed is not trained twice;
- wall time of the search and its evaluations.
Differences are paired by seed (t interval, ``lowbit.report.stats``). Writes
benchmarks/results/releq_protocol.{json,md}. A benchmark, not a test: one torch thread per process.
"""

from __future__ import annotations

import argparse
import math
import json
import sys
from pathlib import Path
from typing import Any

import torch

from lowbit.plan import Plan
from lowbit.recipes import QUANTIZED_FINETUNE
from lowbit.report.stats import Summary, paired_difference
from lowbit.runs.build import load_model_and_data
from lowbit.runs.search_run import SearchOptions, run_search
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.search.hawq import allocation_costs, solve_allocation
from lowbit.search.limits import CostBudget, SpaceCosts
from lowbit.search.outcome import hypervolume
from lowbit.search.sensitivity import SENSITIVITY_FILE, Sensitivity
from lowbit.train import QUIET

RESULTS = Path(__file__).parent / "results"
DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"
ARMS = {"releq-mlp": dict(strategy="releq", policy="mlp"), "releq-lstm": dict(strategy="releq", policy="lstm"),
        "releq-paper": dict(strategy="releq", policy="mlp", releq_state="paper"),
        "random": dict(strategy="random"), "greedy": dict(strategy="greedy"), "tpe": dict(strategy="tpe"),
        "hawq": dict(strategy="hawq", hawq_candidates="sweep"), "hawq-0": {}}
DEFAULT_ARMS = ("hawq", "hawq-0", "random", "tpe", "greedy", "releq-mlp", "releq-lstm", "releq-paper")
LEVELS = (3, 4)
REF_BITS = 8.0


def setups(mnist_dir: str) -> dict[str, dict[str, Any]]:
    return {"lenet5": dict(model="lenet5", dataset="mnist-t10k", data_dir=mnist_dir, search_acts=False, kind="bits",
                           eval_steps=100, float_epochs=6),
            "conv1d": dict(model="conv1d", dataset="mnist1d", data_dir=None, search_acts=True, kind="bops",
                           eval_steps=100, float_epochs=10),
            "resnet20": dict(model="resnet20", dataset="digits", data_dir=None, search_acts=False, kind="bits",
                             eval_steps=40, float_epochs=10)}


def search_options(setup: dict[str, Any], arm: str, seed: int, out: Path, init: str | None, args: Any,
                   budget: float) -> SearchOptions:
    settings = dict(ARMS[arm])
    strategy = settings.pop("strategy")
    return SearchOptions(strategy=strategy, model=setup["model"], dataset=setup["dataset"], data_dir=setup["data_dir"],
                         init=init, search_acts=setup["search_acts"], pin_first_last=False,
                         max_evals=1 if arm == "hawq-0" else args.max_evals, eval_steps=setup["eval_steps"],
                         float_epochs=setup["float_epochs"], finetune_epochs=0, seed=seed, threads=1, out=str(out),
                         resume=out.exists(), **{f"budget_{setup['kind']}": budget if setup["kind"] == "bits"
                                                 else math.ceil(budget - 1e-6)}, **settings)


def level_budgets(setup: dict[str, Any], seed: int) -> tuple[SpaceCosts, dict[int, float]]:
    """The costs of the setup's space and the cost of the uniform 3- and 4-bit plans."""
    args, _, _ = load_model_and_data(setup["model"], setup["dataset"], setup["data_dir"], seed=seed, val_fraction=0.2)
    model = args.build()
    options = SearchOptions(model=setup["model"], search_acts=setup["search_acts"], pin_first_last=False)
    space = options.space(model)
    costs = SpaceCosts.from_model(model, space, options.spec(),
                                  args.sample_input() if setup["kind"] == "bops" else None)
    levels = {b: costs.cost(setup["kind"], space.uniform(b, b if setup["search_acts"] else space.act_bits))
              for b in LEVELS}
    return costs, levels


def final_accuracy(setup: dict[str, Any], seed: int, plan: Plan, key: str, float_dir: str, work: Path,
                   args: Any) -> float:
    """Test accuracy of ``plan`` fine-tuned from the float weights (cached per seed and plan key)."""
    key = "".join(c if c.isalnum() else "_" for c in key)
    out = work / "final" / f"{setup['model']}-s{seed}" / key
    result_file = out / "result.json"
    if not result_file.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        plan_file = out.parent / f"{key}.plan.json"
        plan.save(plan_file)
        options = TrainOptions(model=setup["model"], dataset=setup["dataset"], data_dir=setup["data_dir"],
                               init=float_dir, plan=str(plan_file), quantizer="dorefa", epochs=args.finetune_epochs,
                               lr=QUANTIZED_FINETUNE.lr, optimizer=QUANTIZED_FINETUNE.optimizer, val_fraction=0.2,
                               seed=seed, threads=1, out=str(out))
        run_train(options, reporter=QUIET, command="benchmarks/releq_bench.py")
    return float(json.loads(result_file.read_text())["accuracy"])


def search_records(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("phase") == "search"]


def one_arm(setup: dict[str, Any], arm: str, seed: int, work: Path, float_dir: str | None, args: Any,
            costs: SpaceCosts, levels: dict[int, float]) -> dict[str, Any]:
    """One arm's search (HAWQ-0: the program on the hawq arm's sensitivity), then its final plans."""
    space = costs.space
    row: dict[str, Any] = {"setup": setup["model"], "dataset": setup["dataset"], "seed": seed, "arm": arm}
    out = work / f"{setup['model']}-s{seed}-{'hawq' if arm == 'hawq-0' else arm}"
    if arm != "hawq-0":
        result = run_search(search_options(setup, arm, seed, out, float_dir, args, levels[4]), reporter=QUIET,
                            command="benchmarks/releq_bench.py")
        row.update(search_wall_s=result["search"]["wall_s"], evaluations=result["search"]["evaluations"],
                   fp_accuracy=result["fp_accuracy"])
    elif not (out / SENSITIVITY_FILE).exists():
        raise SystemExit("hawq-0 reads the hawq arm's sensitivity.json: list hawq before hawq-0 in --arms")
    float_dir = float_dir or str(out / "float")
    row["float_dir"] = float_dir
    plans: dict[int, Any] = {}
    if arm == "hawq-0":
        sensitivity = Sensitivity.load(out / SENSITIVITY_FILE)
        objective = allocation_costs(space, sensitivity)
        for b in LEVELS:
            plans[b] = solve_allocation(space, objective, CostBudget(setup["kind"], levels[b], costs))
        row.update(hypervolume=None, search_wall_s=sensitivity.wall_s, evaluations=0)
    else:
        records = search_records(out)
        points = [(r["avg_bits"], r["accuracy"]) for r in records]
        row["hypervolume"] = hypervolume(points, REF_BITS, 0.0)
        row["plans_evaluated"] = len(records)
        for b in LEVELS:
            within = [r for r in records
                      if costs.cost(setup["kind"], space.choices_from_key(r["key"])) <= levels[b] * (1 + 1e-9)]
            best = max(within, key=lambda r: (r["accuracy"], -r["avg_bits"]), default=None)
            plans[b] = None if best is None else space.choices_from_key(best["key"])
    for b, choices in plans.items():
        if choices is None:
            row[f"test_at_{b}"], row[f"plan_at_{b}"], row[f"bits_at_{b}"] = None, None, None
            continue
        plan = Plan.from_layer_bits(space.resolved(choices))
        row[f"test_at_{b}"] = final_accuracy(setup, seed, plan, space.key(choices), float_dir, work, args)
        row[f"plan_at_{b}"] = space.key(choices)
        row[f"bits_at_{b}"] = space.avg_bits(choices)
    return row


def run_setup(setup: dict[str, Any], seeds: list[int], arms: list[str], work: Path, args: Any,
              rows: list[dict[str, Any]], save: Any) -> None:
    for seed in seeds:
        costs, levels = level_budgets(setup, seed)
        float_dir = None
        for arm in arms:
            done = [r for r in rows if (r["setup"], r["seed"], r["arm"]) == (setup["model"], seed, arm)]
            if done:
                float_dir = float_dir or done[0]["float_dir"]
                continue
            row = one_arm(setup, arm, seed, work, float_dir, args, costs, levels)
            float_dir = row["float_dir"]
            rows.append(row)
            save()
            print(f"{setup['model']} s{seed} {arm:11s} hv {row['hypervolume']} test@3 {row['test_at_3']} "
                  f"test@4 {row['test_at_4']} evals {row['evaluations']} {row['search_wall_s']:.0f}s", flush=True)


def add_seconds(row: dict[str, Any], work: Path) -> dict[str, Any]:
    """The arm's compute in seconds, robust to a rerun that replays a search from its cache: the
    wall time of its own evaluations (each arm has its own cache) plus the sensitivity measurement
    where it used one (hawq, hawq-0, ReLeQ's informative state)."""
    folder = work / f"{row['setup']}-s{row['seed']}-{'hawq' if row['arm'] == 'hawq-0' else row['arm']}"
    lines = (folder / "evaluations.jsonl").read_text().splitlines()[1:]
    evals = 0.0 if row["arm"] == "hawq-0" else sum(json.loads(line).get("wall_s", 0.0) for line in lines)
    sensitivity = folder / SENSITIVITY_FILE
    row["eval_s"] = evals
    row["sensitivity_s"] = Sensitivity.load(sensitivity).wall_s if sensitivity.exists() else 0.0
    row["compute_s"] = evals + row["sensitivity_s"]
    return row


def summarize(rows: list[dict[str, Any]], baseline: str = "releq-mlp") -> list[dict[str, Any]]:
    out = []
    for setup in dict.fromkeys(r["setup"] for r in rows):
        cell = [r for r in rows if r["setup"] == setup]
        base = {r["seed"]: r for r in cell if r["arm"] == baseline}
        for arm in dict.fromkeys(r["arm"] for r in cell):
            mine = {r["seed"]: r for r in cell if r["arm"] == arm}
            entry: dict[str, Any] = {"setup": setup, "arm": arm, "seeds": sorted(mine)}
            for key in ("hypervolume", "test_at_3", "test_at_4", "search_wall_s", "evaluations", "bits_at_3",
                        "bits_at_4", "compute_s"):
                values = {s: r[key] for s, r in mine.items() if r.get(key) is not None}
                entry[key] = Summary.of(list(values.values())).to_dict() if values else None
                if key in ("hypervolume", "test_at_3", "test_at_4") and arm != baseline and values:
                    theirs = {s: r[key] for s, r in base.items() if r.get(key) is not None}
                    common = sorted(set(values) & set(theirs))
                    entry[f"{key}_vs_{baseline}"] = (paired_difference({s: values[s] for s in common},
                                                                       {s: theirs[s] for s in common}).to_dict()
                                                     if len(common) > 1 else None)
            entry["plans_at_4"] = [r["plan_at_4"] for r in mine.values()]
            out.append(entry)
    return out


def _fmt(summary: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not summary:
        return "-"
    return f"{scale * summary['mean']:.{digits}f} ± {scale * (summary['sd'] or 0):.{digits}f}"


def _diff(d: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not d:
        return "-"
    verdict = "within noise" if d["within_noise"] else ("above" if d["mean"] > 0 else "below")
    return (f"{scale * d['mean']:+.{digits}f} [{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}] "
            f"{verdict}")


def render(saved: dict[str, Any]) -> None:
    m = saved["meta"]
    lines = ["# Mixed-precision search strategies under the protocol (issue 19)", "",
             f"Command: `{m['command']}`", "",
             f"Seeds {m['seeds']}; {m['max_evals']} new plan evaluations per arm and seed (HAWQ-0: none); every arm "
             "under the budget of the uniform 4-bit plan (lenet5 and resnet20: average weight bits; conv1d: BOPs "
             "with 4-bit weights and activations). Every layer searched, choices {2,3,4,5,8}, DoReFa, evaluator "
             "accuracy on a 20% validation split of train. Best plan at B bits = highest validation accuracy within "
             f"the B-bit budget, fine-tuned {m['finetune_epochs']} epochs (SGD lr {QUANTIZED_FINETUNE.lr}), test "
             "accuracy once (the fine-tune's length was raised from 3 epochs to 10 for every arm after the first conv1d "
             "test figures: equal for all arms, but the absolute accuracies are not test-blind). Mean ± sd over seeds; differences paired by seed against releq-mlp, 95% t interval "
             "(\"within noise\" when it holds 0). Hypervolume: area dominated by the evaluated plans' (validation "
             "accuracy, average bits) Pareto set up to (8 bits, 0). CPU, one torch thread per process, two "
             "processes at a time.", "",
             "Compute s: the wall time of the arm's own plan evaluations plus its sensitivity measurement "
             "(hawq, hawq-0 and ReLeQ's informative state), from the run folders, so a rerun that replays a search "
             "from its cache still shows what the search cost; it leaves out the strategy's own bookkeeping "
             "(PPO updates, TPE's sampler: seconds).", "",
             "| setup | arm | hypervolume | vs releq-mlp | test % at 3 bits | vs releq-mlp | test % at 4 bits "
             "| vs releq-mlp | compute s | evals |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in saved["summary"]:
        lines.append(
            f"| {r['setup']} | {r['arm']} | {_fmt(r['hypervolume'], 1, 3)} | "
            f"{_diff(r.get('hypervolume_vs_releq-mlp'), 1, 3)} | {_fmt(r['test_at_3'], 100)} | "
            f"{_diff(r.get('test_at_3_vs_releq-mlp'), 100)} | {_fmt(r['test_at_4'], 100)} | "
            f"{_diff(r.get('test_at_4_vs_releq-mlp'), 100)} | {_fmt(r['compute_s'], 1, 0)} | "
            f"{_fmt(r['evaluations'], 1, 0)} |")
    lines += ["", "Key comparisons, paired by seed (95% t interval; hypervolume, then test % at 4 bits):", "",
              "| setup | comparison | hypervolume | test % at 4 bits |", "|---|---|---|---|"]
    for setup, first, second in key_pairs(saved["rows"]):
        diffs = [paired(saved["rows"], setup, first, second, key) for key in ("hypervolume", "test_at_4")]
        lines.append(f"| {setup} | {first} - {second} | {_diff(diffs[0], 1, 3)} | {_diff(diffs[1], 100)} |")
    (RESULTS / "releq_protocol.md").write_text("\n".join(lines) + "\n")


KEY_PAIRS = (("releq-mlp", "random"), ("releq-mlp", "tpe"), ("releq-lstm", "random"), ("releq-mlp", "releq-paper"),
             ("hawq", "random"), ("hawq", "tpe"), ("hawq-0", "random"))


def key_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    arms = {(r["setup"], r["arm"]) for r in rows}
    return [(setup, a, b) for setup in dict.fromkeys(r["setup"] for r in rows) for a, b in KEY_PAIRS
            if (setup, a) in arms and (setup, b) in arms]


def paired(rows: list[dict[str, Any]], setup: str, first: str, second: str, key: str) -> dict | None:
    """``first - second`` over the seeds both have a value for (None with fewer than two)."""
    values = {arm: {r["seed"]: r[key] for r in rows if r["setup"] == setup and r["arm"] == arm
                    and r.get(key) is not None} for arm in (first, second)}
    common = sorted(set(values[first]) & set(values[second]))
    if len(common) < 2:
        return None
    return paired_difference({s: values[first][s] for s in common}, {s: values[second][s] for s in common}).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", nargs="+", default=["lenet5", "conv1d", "resnet20"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS))
    parser.add_argument("--max-evals", type=int, default=16)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--mnist-dir", default=str(DEFAULT_MNIST))
    parser.add_argument("--work", default="runs/search-bench", help="run folders (kept, reused on a rerun)")
    parser.add_argument("--part", default="all", help="name of this process's rows file (run parts side by side)")
    parser.add_argument("--render-only", action="store_true", help="merge the parts' rows and write the tables")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "seeds": args.seeds, "max_evals": args.max_evals,
            "finetune_epochs": args.finetune_epochs, "arms": args.arms, "threads": 1, "device": "cpu"}
    if args.render_only:
        meta["command"] = ("python benchmarks/releq_bench.py --setups SETUP --seeds S... --part P (parts run side by "
                           "side, two processes), then python benchmarks/releq_bench.py --render-only")
        write_results(meta, work)
        return
    torch.set_num_threads(1)
    rows_file = work / f"rows-{args.part}.json"
    rows: list[dict[str, Any]] = json.loads(rows_file.read_text()) if rows_file.exists() else []

    def save() -> None:
        rows_file.write_text(json.dumps(rows, indent=1) + "\n")

    all_setups = setups(args.mnist_dir)
    for name in args.setups:
        run_setup(all_setups[name], args.seeds, args.arms, work, args, rows, save)
    write_results(meta, work)


def write_results(meta: dict[str, Any], work: Path) -> None:
    """Merge every part's rows in ``work`` and write releq_protocol.{json,md}."""
    rows = [add_seconds(r, work) for f in sorted(work.glob("rows-*.json")) for r in json.loads(f.read_text())]
    saved = {"meta": meta, "rows": rows, "summary": summarize(rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "releq_protocol.json").write_text(json.dumps(saved, indent=2) + "\n")
    render(saved)


if __name__ == "__main__":
    main()
