"""The comparison protocol of BENCHMARKS.md ("The protocol every comparison follows"), in code.

1. **Tuning.** Every arm gets the same number of ``trials`` over its own space (knob -> candidate
   values: lr, λ, a fine-tune lr, ...). When its grid has no more points than ``trials`` every point
   is run; otherwise Optuna's TPE sampler (seeded) picks ``trials`` of them. A trial is a run on the
   *tuning view* of the data (``tuning_fraction`` of the training split, held out with a fixed seed,
   replaces the test split, which is never loaded: ``lowbit.data.split.tuning_view``), at each
   tuning seed; its score is the mean hold-out accuracy. The best setting wins (first on ties).
2. **Final runs.** Each arm's chosen setting runs on every seed on the real splits and is scored
   once on test.
3. **Statistics.** Mean ± sd per arm; the paired difference against the baseline with a Student-t
   interval over seeds (``lowbit.report.stats``); "within noise" when it covers 0.

A run whose folder already holds ``result.json`` is read, not rerun, so an interrupted comparison
continues where it stopped (the run that was interrupted starts over in its folder).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError
from lowbit.io import atomic_write_text
from lowbit.report.comparison import COMPARISON_FILE
from lowbit.report.stats import PairedDifference, Summary, paired_difference
from lowbit.runs.config_run import COMMANDS
from lowbit.runs.folder import RunFolder
from lowbit.runs.option_values import merge_options
from lowbit.train import QUIET, Reporter

RunArm = Callable[[str, dict[str, Any], Path], dict[str, Any]]  # (command, options, out) -> result.json


@dataclass
class Arm:
    """One method under comparison: a command, its options, and the knobs tuned on validation."""

    name: str
    command: str
    options: dict[str, Any]
    space: dict[str, list[Any]] = field(default_factory=dict)

    def check(self) -> None:
        if self.command not in COMMANDS:
            raise ConfigError(f"arm {self.name!r}: unknown command {self.command!r}; one of {', '.join(COMMANDS)}")
        for key in ("seed", "out", "tuning_fraction"):
            if key in self.options or key in self.space:
                raise ConfigError(f"arm {self.name!r}: {key!r} is set by the protocol, not by the arm")
        for knob, values in self.space.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"arm {self.name!r}: tune {knob!r} needs a non-empty list of values")
        cls = COMMANDS[self.command].options
        for setting in grid(self.space) or [{}]:  # every candidate is a valid set of options
            merge_options(cls, [self.options, setting]).validate()


@dataclass
class Protocol:
    seeds: tuple[int, ...] = (0, 1, 2)
    trials: int = 4  # per arm
    tuning_seeds: tuple[int, ...] = (0,)
    tuning_fraction: float = 0.2
    confidence: float = 0.95

    def check(self) -> None:
        if not self.seeds or not self.tuning_seeds:
            raise ConfigError("the protocol needs at least one seed and one tuning seed")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"trials must be an integer >= 1, got {self.trials!r}")
        if not 0.0 < self.tuning_fraction < 1.0:
            raise ConfigError(f"tuning_fraction must be in (0, 1), got {self.tuning_fraction!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence!r}")


def grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the knobs' values, in order."""
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))] if keys else []


def seeded(options: Mapping[str, Any], seed: int, **extra: Any) -> dict[str, Any]:
    """``options`` at ``seed``: a ``{seed}`` in a text option (``init: runs/float-s{seed}``) becomes it."""
    filled = {k: v.format(seed=seed) if isinstance(v, str) and "{seed}" in v else v for k, v in options.items()}
    return {**filled, "seed": seed, **extra}


def run_command(command: str, options: dict[str, Any], out: Path, reporter: Reporter = QUIET) -> dict[str, Any]:
    """One run through its command (``lowbit.runs.config_run.COMMANDS``), or its result.json when done."""
    folder = RunFolder(out)
    if folder.file("result.json").exists():
        return folder.read_result()
    if out.is_dir():  # a run of this comparison that was interrupted: it starts over
        shutil.rmtree(out)
    spec = COMMANDS[command]
    built = merge_options(spec.options, [options, {"out": str(out)}])
    return spec.run(built, reporter=reporter, command=f"lowbit compare ({command})")


@dataclass
class Trial:
    setting: dict[str, Any]
    scores: dict[int, float]  # tuning seed -> hold-out accuracy

    @property
    def score(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


def _label(setting: Mapping[str, Any]) -> str:
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in setting.items()) or "default"


def tune(arm: Arm, protocol: Protocol, folder: Path, run: RunArm = run_command) -> list[Trial]:
    """``protocol.trials`` settings of the arm, each scored on the tuning hold-out (never test)."""
    def score(setting: dict[str, Any]) -> Trial:
        scores = {}
        for seed in protocol.tuning_seeds:
            options = seeded({**arm.options, **setting}, seed, tuning_fraction=protocol.tuning_fraction)
            result = run(arm.command, options, folder / f"{_label(setting)}-s{seed}")
            if result.get("scored_on") != "tuning hold-out of train":
                raise AssertionError("a tuning run was scored on test")  # the view guarantees it; checked anyway
            scores[seed] = float(result["accuracy"])
        return Trial(setting, scores)

    points = grid(arm.space)
    if len(points) <= protocol.trials:
        return [score(setting) for setting in points]  # nothing to tune: no trial
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    trials = []
    for _ in range(protocol.trials):
        asked = study.ask()
        trial = score({k: asked.suggest_categorical(k, v) for k, v in arm.space.items()})
        study.tell(asked, trial.score)
        trials.append(trial)
    return trials


def chosen_setting(trials: Sequence[Trial]) -> dict[str, Any]:
    """The best trial's setting (the first of equal scores); {} when nothing was tuned."""
    return max(trials, key=lambda t: t.score).setting if trials else {}


@dataclass
class ArmResult:
    name: str
    command: str
    options: dict[str, Any]
    space: dict[str, list[Any]]
    trials: list[Trial]
    chosen: dict[str, Any]
    scores: dict[int, float]  # seed -> test accuracy
    avg_bits: dict[int, float]
    plans: dict[int, list[int]]  # seed -> weight bits per layer of the final run
    unhealthy: list[int]  # seeds whose final run failed its health checks (lowbit.health)
    summary: Summary
    versus_baseline: PairedDifference | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.command, "options": self.options, "space": self.space,
                "trials": [{"setting": t.setting, "val_scores": t.scores, "val_score": t.score} for t in self.trials],
                "chosen": self.chosen, "test_accuracy": self.scores, "avg_bits": self.avg_bits, "plans": self.plans,
                "unhealthy_seeds": self.unhealthy,
                "summary": self.summary.to_dict(),
                "versus_baseline": self.versus_baseline.to_dict() if self.versus_baseline else None}


def compare(arms: Sequence[Arm], baseline: str, protocol: Protocol, folder: str | Path,
            run: RunArm = run_command, reporter: Reporter = QUIET) -> dict[str, Any]:
    """Tune every arm, run each chosen setting on every seed, and compare against ``baseline``;
    writes ``comparison.json`` into ``folder`` and returns its content."""
    folder = Path(folder)
    protocol.check()
    names = [a.name for a in arms]
    if len(set(names)) != len(names) or baseline not in names:
        raise ConfigError(f"arms need distinct names and the baseline {baseline!r} among them; got {names}")
    for arm in arms:
        arm.check()
    results = []
    for arm in arms:
        reporter.log(f"[bold]{arm.name}[/]: tuning {len(grid(arm.space))} candidate(s), "
                     f"at most {protocol.trials} trial(s)")
        trials = tune(arm, protocol, folder / "tune" / arm.name, run)
        chosen = chosen_setting(trials)
        reporter.log(f"{arm.name}: chose {chosen or 'its defaults (nothing tuned)'}")
        finals = {seed: run(arm.command, seeded({**arm.options, **chosen}, seed),
                            folder / "final" / arm.name / f"s{seed}") for seed in protocol.seeds}
        scores = {seed: float(r["accuracy"]) for seed, r in finals.items()}
        results.append(ArmResult(arm.name, arm.command, arm.options, arm.space, trials, chosen, scores,
                                 {seed: float(r.get("avg_bits", 32.0)) for seed, r in finals.items()},
                                 {seed: list(r.get("weight_bits", {}).values()) for seed, r in finals.items()},
                                 [seed for seed, r in finals.items() if not r.get("health", {}).get("ok", True)],
                                 Summary.of(list(scores.values()))))
        if results[-1].unhealthy:
            reporter.warn(f"{arm.name}: the final runs of seeds {results[-1].unhealthy} failed their health checks; "
                          "a comparison against an arm at chance says nothing (fix its recipe first)")
    base = next(r for r in results if r.name == baseline)
    for result in results:
        if result is not base:
            result.versus_baseline = paired_difference(result.scores, base.scores, protocol.confidence)
    comparison = {"baseline": baseline, "protocol": asdict(protocol), "arms": [r.to_dict() for r in results]}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / COMPARISON_FILE, json.dumps(comparison, indent=1))
    return comparison
