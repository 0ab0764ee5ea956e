"""``lowbit compare SPEC.yaml [--out DIR]``: compare methods under the protocol of BENCHMARKS.md
(``lowbit.runs.protocol``): the same tuning budget per arm on a hold-out of the training split,
the chosen settings on every seed, one test score each, paired differences with intervals.

SPEC.yaml::

    baseline: dorefa                  # the arm the others are compared with
    protocol: {seeds: [0, 1, 2], trials: 4, tuning_fraction: 0.2, tuning_seeds: [0]}
    arms:
      dorefa:
        command: train                # train | waveq | dcq | search, with its options ...
        options: {model: lenet5, dataset: digits, quantizer: dorefa, wbits: 2, epochs: 5}
        tune: {lr: [0.01, 0.05]}      # knob -> candidates, scored on the hold-out only
      sinreq:
        config: configs/sinreq/x.yaml # ... or an experiment config, or a run folder (run: DIR)
        set: {sinreq: 0.01}           # options on top of the config's or run's
        tune: {lr: [0.01, 0.05], sinreq: [0.001, 0.01]}

Writes OUT/comparison.json, comparison.md (the table), comparison.png, and the run folders
(OUT/tune/ARM/..., OUT/final/ARM/sSEED); rerunning continues an interrupted comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from lowbit.cli.config import read_yaml
from lowbit.errors import ConfigError, did_you_mean
from lowbit.runs.config_run import COMMANDS, check_mapping
from lowbit.runs.folder import CONFIG_FILE
from lowbit.runs.protocol import Arm, Protocol, compare
from lowbit.search.strategies import STRATEGIES
from lowbit.train import Reporter

DESCRIPTION = ("Compare methods fairly: every arm gets the same number of tuning trials, scored on a hold-out of "
               "the training split (the test split is never loaded while tuning); each chosen setting then runs on "
               "every seed and is scored once on test; the table gives mean ± sd and the paired difference against "
               "the baseline with its interval.")
SPEC_KEYS = ("baseline", "protocol", "arms")
ARM_KEYS = ("command", "options", "config", "run", "set", "tune")
PROTOCOL_PROTECTED = ("seed", "out", "tuning_fraction")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="comparison spec (YAML): baseline, protocol, arms")
    parser.add_argument("--out", default=None, help="folder for the comparison (default runs/compare-SPECNAME)")


def _command_of_run(saved: dict[str, Any]) -> str:
    method = str(saved.get("method", ""))
    if method.startswith("waveq-"):
        return "waveq"
    if method.startswith("dcq-"):
        return "dcq"
    return "search" if method in STRATEGIES else "train"


def _arm_source(name: str, entry: dict[str, Any], base: Path) -> tuple[str, dict[str, Any]]:
    """(command, options) from the arm's command+options, experiment config or run folder."""
    given = [k for k in ("command", "config", "run") if k in entry]
    if len(given) != 1:
        raise ConfigError(f"arm {name!r}: give exactly one of command (with options), config or run")
    if "command" in entry:
        return str(entry["command"]), dict(entry.get("options") or {})
    if "config" in entry:
        command, options, _, _ = check_mapping(read_yaml(base / entry["config"]), str(entry["config"]))
        return command, options
    folder = base / entry["run"]
    saved = read_yaml(folder / CONFIG_FILE) if (folder / CONFIG_FILE).exists() else None
    if saved is None:
        raise ConfigError(f"arm {name!r}: {folder} holds no {CONFIG_FILE} (not a run folder)")
    command = _command_of_run(saved)
    fields = COMMANDS[command].options.__dataclass_fields__
    return command, {k: v for k, v in saved.items() if k in fields}


def load_arm(name: str, entry: Any, base: Path) -> Arm:
    if not isinstance(entry, dict):
        raise ConfigError(f"arm {name!r} must be a mapping with keys among {', '.join(ARM_KEYS)}")
    for key in entry:
        if key not in ARM_KEYS:
            raise ConfigError(f"arm {name!r}: unknown key {key!r}{did_you_mean(str(key), ARM_KEYS)}")
    command, options = _arm_source(name, entry, base)
    options = {k.replace("-", "_"): v for k, v in {**options, **(entry.get("set") or {})}.items()
               if k.replace("-", "_") not in PROTOCOL_PROTECTED}
    tune = {str(k).replace("-", "_"): v for k, v in (entry.get("tune") or {}).items()}
    return Arm(str(name), command, options, tune)


def load_spec(path: str | Path) -> tuple[list[Arm], str, Protocol]:
    path = Path(path)
    spec = read_yaml(path)
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(str(key), SPEC_KEYS)}; "
                              f"a comparison spec has {', '.join(SPEC_KEYS)}")
    arms_spec = spec.get("arms")
    if not isinstance(arms_spec, dict) or not arms_spec:
        raise ConfigError(f"{path}: 'arms' must map arm names to their runs")
    arms = [load_arm(name, entry, path.parent) for name, entry in arms_spec.items()]
    baseline = str(spec.get("baseline") or arms[0].name)
    raw = dict(spec.get("protocol") or {})
    try:
        protocol = Protocol(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except TypeError as exc:
        raise ConfigError(f"{path}: bad protocol ({exc}); keys: seeds, trials, tuning_seeds, tuning_fraction, "
                          "confidence") from None
    return arms, baseline, protocol


def run(args: argparse.Namespace) -> int:
    from lowbit.report.comparison import comparison_table, plot_comparison

    arms, baseline, protocol = load_spec(args.spec)
    out = Path(args.out or f"runs/compare-{Path(args.spec).stem}")
    reporter = Reporter(quiet=args.quiet)
    comparison = compare(arms, baseline, protocol, out, reporter=reporter)
    table = comparison_table(comparison)
    (out / "comparison.md").write_text(table)
    plot_comparison(comparison, out / "comparison.png")
    if not args.quiet:
        Console(soft_wrap=True).print(table, highlight=False, markup=False)
    return 0
