"""``lowbit run``: an experiment config -> one command's options; a dry run that builds everything
without training; or the run itself.

An experiment config (``configs/<method>/*.yaml``) is a mapping with four top-level keys:

    command: train | waveq | dcq | search    # which options dataclass ``options`` fills, which run_* runs it
    requires: ../float/resnet20-cifar10.yaml # optional: the float run this experiment starts from
    options: {...}                            # keys exactly the dataclass's fields (dashes allowed)
    paper: {...}                              # the abstract's claim and number; never read as options

Dependencies. An experiment that starts from float weights names the float run's folder in its
start option (``init`` for train/waveq/search, ``teacher`` for dcq) *and* names the config that
writes that folder in ``requires`` (a path relative to the config file). The two must agree:
the required config is a float ``train`` config whose ``out`` is that folder, on the same model
and dataset. ``lowbit run`` does not run the dependency for you; it says which command to run
first. Overriding the start option (``--set init=DIR``) drops the requirement; overriding the
dataset while still pointing at the float run of another dataset is an error that says what to
run. A search config can instead train its own float model (``init: null`` and ``float_epochs``),
which is what the ReLeQ configs do so the validation split the agent sees stays held out.

DESIGN.md: only the CLI reads config files. So :mod:`lowbit.cli.run_cmd` reads the YAML and
merges options; this module works on parsed mappings and built options: structure checks, typed
``--set`` overrides, dependency links, the dry run and the run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lowbit.costs import model_costs
from lowbit.data import ArrayLoader, DatasetSplits, load_dataset
from lowbit.data.files import resolve_data_dir
from lowbit.data.registry import DATASETS
from lowbit.errors import CheckpointError, ConfigError, DataError, did_you_mean, unknown_name
from lowbit.io import atomic_write_text
from lowbit.nn import layer_bits, quantizable_layers, quantize_
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec
from lowbit.runs.build import fit_model_to_data
from lowbit.runs.dcq_run import DcqOptions, run_dcq, sample_input
from lowbit.runs.model_io import load_float_weights, load_model, resolve_model_file
from lowbit.runs.search_run import SearchOptions, run_search
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.runs.waveq_run import WaveQOptions, run_waveq
from lowbit.train import QUIET, Reporter

TOP_KEYS = ("command", "requires", "options", "paper")
EXPERIMENT_FILE = "experiment.yaml"  # written into the run folder: config, overrides, the paper's claim

# A dry run's stand-in for a file-based dataset whose files are not here: (channels, side, classes).
STAND_IN_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 10), "mnist-t10k": (1, 28, 10), "cifar10": (3, 32, 10), "svhn": (3, 32, 10),
}
STAND_IN_SIZES = {"n_train": 64, "n_test": 32}


@dataclass(frozen=True)
class Command:
    """One runnable command: its options dataclass, its run function and the option that names
    the float run it starts from."""

    name: str
    options: type
    run: Callable[..., dict[str, Any]]
    start_field: str


COMMANDS: dict[str, Command] = {
    "train": Command("train", TrainOptions, run_train, "init"),
    "waveq": Command("waveq", WaveQOptions, run_waveq, "init"),
    "dcq": Command("dcq", DcqOptions, run_dcq, "teacher"),
    "search": Command("search", SearchOptions, run_search, "init"),
}


@dataclass
class Experiment:
    """A loaded experiment: validated options, the paper block, and the float run it starts from."""

    command: str
    options: Any
    source: str = "<config>"
    paper: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    requires: Experiment | None = None  # linked dependency (loaded without overrides)
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> Command:
        return COMMANDS[self.command]

    @property
    def start(self) -> str | None:
        """The float run (folder or model file) this experiment starts from, if any."""
        return getattr(self.options, self.spec.start_field)

    def out(self) -> str:
        return str(self.options.out or self.options.default_out())


# ---- structure and overrides ------------------------------------------------------------------

def check_mapping(data: Mapping[str, Any], source: str) -> tuple[str, dict[str, Any], dict[str, Any], str | None]:
    """(command, options, paper, requires) of a parsed config, checking the top-level structure."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: an experiment config is a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{source}: unknown top-level key {key!r}{did_you_mean(str(key), TOP_KEYS)}; "
                              f"an experiment config has {', '.join(TOP_KEYS)} (options go under 'options:')")
    command = data.get("command")
    if command is None:
        raise ConfigError(f"{source}: missing 'command' ({' | '.join(COMMANDS)})")
    if command not in COMMANDS:
        raise ConfigError(f"{source}: {unknown_name('command', str(command), COMMANDS)}")
    options = data.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{source}: 'options' must be a mapping of {command} option: value")
    paper = data.get("paper") or {}
    if not isinstance(paper, Mapping):
        raise ConfigError(f"{source}: 'paper' must be a mapping (claim, reported, ...)")
    requires = data.get("requires")
    if requires is not None and (not isinstance(requires, str) or not requires.strip()):
        raise ConfigError(f"{source}: 'requires' must name one config file (relative to this one)")
    return str(command), dict(options), dict(paper), requires


def _allowed_types(cls: type, key: str) -> tuple[type, ...]:
    hint = typing.get_type_hints(cls)[key]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(typing.get_args(hint))
    return (hint,)


_NONE_WORDS = {"null", "none", "~", ""}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def parse_override(cls: type, text: str) -> tuple[str, Any]:
    """``"key=value"`` -> (field name, value typed by ``cls``'s field annotation).

    ``null``/``none``/``~`` (or nothing after ``=``) give None where the field allows it; bools
    take true/false/yes/no/on/off/1/0. An unknown key raises ConfigError with a "did you mean"."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set takes key=value, got {text!r}")
    raw_key, value = text.split("=", 1)
    key = raw_key.strip().replace("-", "_")
    fields = list(cls.__dataclass_fields__)
    if key not in fields:
        raise ConfigError(f"--set: unknown option {raw_key.strip()!r}{did_you_mean(key, fields)}; "
                          f"known options: {', '.join(sorted(fields))}")
    allowed = _allowed_types(cls, key)
    word = value.strip()
    if word.lower() in _NONE_WORDS and type(None) in allowed:
        return key, None
    if bool in allowed:
        if word.lower() in _BOOL_WORDS:
            return key, _BOOL_WORDS[word.lower()]
    if int in allowed:
        try:
            return key, int(word)
        except ValueError:
            pass
    if float in allowed:
        try:
            number = float(word)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return key, number
    if str in allowed:
        return key, value
    names = "/".join(t.__name__ for t in allowed)
    raise ConfigError(f"--set {raw_key.strip()}={value!r}: {key} must be {names}")


def parse_overrides(cls: type, texts: list[str]) -> dict[str, Any]:
    """Several ``key=value`` texts (later ones win)."""
    return dict(parse_override(cls, text) for text in texts)


def resolve_out(options: Any) -> None:
    """Fill ``{option}`` placeholders in ``options.out`` from the options themselves, so that
    ``out: runs/sinreq/x-w{wbits}-s{seed}`` follows ``--set wbits=3 seed=1``."""
    out = options.out
    if out is None or "{" not in str(out):
        return
    values = dataclasses.asdict(options)
    try:
        options.out = str(out).format(**values)
    except KeyError as exc:
        name = str(exc.args[0])
        raise ConfigError(f"out {out!r}: unknown placeholder {{{name}}}{did_you_mean(name, values)}; "
                          "placeholders name options, e.g. {wbits} or {seed}") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise ConfigError(f"out {out!r}: bad placeholder ({exc}); write them like {{wbits}}") from None


# ---- dependencies -----------------------------------------------------------------------------

def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.normpath(str(a)) == os.path.normpath(str(b))


def link_dependency(exp: Experiment, dep: Experiment) -> None:
    """Attach ``dep`` (loaded without overrides) as the float run ``exp`` starts from, or note why
    it no longer applies; raise ConfigError when the two do not fit together."""
    if dep.command != "train" or dep.options.quantizer != NO_QUANTIZER:
        raise ConfigError(f"{exp.source}: requires {dep.source}, which is not a float 'train' config "
                          f"(command {dep.command}, quantizer {getattr(dep.options, 'quantizer', '?')})")
    if not dep.options.out:
        raise ConfigError(f"{exp.source}: required config {dep.source} must name its output folder ('out')")
    name, start = exp.spec.start_field, exp.start
    if start is None or not _same_path(start, dep.options.out):
        exp.notes.append(f"{name} is {start!r}, not {dep.options.out} (written by {dep.source}): "
                         "that requirement does not apply")
        return
    model = exp.options.model if exp.command != "dcq" else dep.options.model
    wanted = {"model": model, "dataset": exp.options.dataset,
              "width_mult": getattr(exp.options, "width_mult", 1.0) if exp.command != "dcq" else dep.options.width_mult}
    have = {"model": dep.options.model, "dataset": dep.options.dataset, "width_mult": dep.options.width_mult}
    wrong = [k for k in wanted if wanted[k] != have[k]]
    if wrong:
        sets = " ".join(f"{k}={wanted[k]}" for k in wrong)
        raise ConfigError(
            f"{exp.source}: {name} {start} is the output of {dep.source}, which trains "
            f"{', '.join(f'{k} {have[k]}' for k in wrong)}, but this run has "
            f"{', '.join(f'{k} {wanted[k]}' for k in wrong)}; run `lowbit run {dep.source} --set {sets} "
            f"out=DIR` (with the same data_dir) and pass --set {name}=DIR here")
    exp.requires = dep


def _present(path: str | None) -> bool:
    if path is None:
        return False
    try:
        resolve_model_file(path)
    except CheckpointError:
        return False
    return True


# ---- the run ----------------------------------------------------------------------------------

def validate_options(options: Any) -> str | None:
    """``options.validate()``; a GPU config on a machine without one is validated as if for the
    CPU (everything else still checked), and the returned note says so (None otherwise)."""
    device = str(options.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        dataclasses.replace(options, device="cpu").validate()
        return f"device {device}: no GPU here, so the options were checked as if for the CPU"
    options.validate()
    return None


def check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("this config runs on a GPU (device: cuda) and none is available here; "
                          "--set device=cpu runs it on the CPU (slowly), or --dry-run checks it without one")


def run_experiment(exp: Experiment, reporter: Reporter | None = None, command: str | None = None) -> dict[str, Any]:
    """Run the experiment's command; its run folder also gets ``experiment.yaml`` (config file,
    overrides and the paper's claim), so a result names the claim it tests."""
    reporter = reporter or Reporter()
    check_device(exp.options.device)
    exp.options.validate()
    if exp.requires is not None and not _present(exp.start):
        raise ConfigError(f"{exp.source} starts from {exp.start}, the float run written by {exp.requires.source}, "
                          f"which is not there yet: run `lowbit run {exp.requires.source}` first")
    for note in exp.notes:
        reporter.log(note)
    result = exp.spec.run(exp.options, reporter=reporter, command=command)
    folder = Path(exp.out())
    if folder.is_dir():
        atomic_write_text(folder / EXPERIMENT_FILE, experiment_record(exp))
    return result


def experiment_record(exp: Experiment) -> str:
    """``experiment.yaml``: which config ran, with which overrides, and what the paper claims."""
    record = {"config": exp.source, "command": exp.command, "overrides": exp.overrides,
              "requires": exp.requires.source if exp.requires is not None else None, "paper": exp.paper}
    return yaml.safe_dump(record, sort_keys=False, allow_unicode=True)


# ---- the dry run ------------------------------------------------------------------------------

@dataclass
class DryRun:
    """What a dry run built: the summary paragraph and facts tests can check."""

    summary: str
    stand_in: str | None  # why the data is a synthetic stand-in, or None for the real data
    data: str
    params: int
    details: dict[str, Any] = field(default_factory=dict)


def dry_run_data(dataset: str, data_dir: str | None, seed: int, val_fraction: float = 0.0
                 ) -> tuple[DatasetSplits, str | None]:
    """The real data when it is here, else a seeded synthetic stand-in of its shape (and why)."""
    if dataset not in DATASETS:
        raise unknown_name("dataset", dataset, DATASETS)
    reason = None
    if DATASETS[dataset].uses_files:
        folder = resolve_data_dir(dataset, data_dir)
        if not folder.is_dir():
            reason = f"{dataset} is not on this machine (no folder {folder})"
        else:
            try:
                return load_dataset(dataset, data_dir, seed=seed, val_fraction=val_fraction), None
            except DataError as exc:
                reason = f"{dataset} could not be read ({exc})"
    if reason is None:
        return load_dataset(dataset, data_dir, seed=seed, val_fraction=val_fraction), None
    if dataset not in STAND_IN_SHAPES:
        raise ConfigError(f"{reason}, and no stand-in shape is known for it; give data_dir")
    channels, side, classes = STAND_IN_SHAPES[dataset]
    data = load_dataset("synthetic", seed=seed, val_fraction=val_fraction, num_classes=classes,
                        in_channels=channels, input_size=side, **STAND_IN_SIZES)
    return data, (f"{reason}: a synthetic stand-in of its shape ({channels}x{side}x{side}, {classes} classes, "
                  f"{STAND_IN_SIZES['n_train']} train / {STAND_IN_SIZES['n_test']} test random images) was used")


def _batch(data: DatasetSplits, n: int = 2) -> torch.Tensor:
    loader = ArrayLoader(data.test, batch_size=n, shuffle=False, mean=data.mean, std=data.std)
    return next(iter(loader))[0]


def _forward(model: nn.Module, x: torch.Tensor, classes: int) -> None:
    model.eval()
    with torch.no_grad():
        out = model(x)
    if tuple(out.shape) != (x.shape[0], classes):
        raise ConfigError(f"the built model gives outputs of shape {tuple(out.shape)}, "
                          f"expected ({x.shape[0]}, {classes})")
    if not torch.isfinite(out).all():
        raise ConfigError("the built model gives non-finite outputs on the sample batch")


def _init_note(net: nn.Module, exp: Experiment, what: str = "float weights") -> str:
    start = exp.start
    if start is None:
        return "from random init"
    if _present(start):
        load_float_weights(net, start)
        return f"{what} from {start} (loaded)"
    made_by = f", written by `lowbit run {exp.requires.source}`" if exp.requires is not None else ""
    return f"{what} from {start} (not there yet{made_by}; random weights stand in for the dry run)"


def _bits_text(model: nn.Module) -> str:
    bits = layer_bits(model)
    weights = ", ".join(str(b.weight) for b in bits.values())
    acts = {b.act for b in bits.values()}
    act = (f"activations {acts.pop()}" if len(acts) == 1
           else "activations " + ", ".join(str(b.act) for b in bits.values()))
    return f"weight bits per layer {weights}; {act}"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _device_note(device: str) -> str:
    if not str(device).startswith("cuda"):
        return ""
    here = "" if torch.cuda.is_available() else " (this machine has none: --set device=cpu to run it here, slowly)"
    return f" Runs on a GPU (device {device}){here}; the dry run built on the CPU."


def dry_run(exp: Experiment, reporter: Reporter = QUIET) -> DryRun:
    """Build the experiment's data, model, quantizer and method without training (on the CPU)."""
    validate_options(exp.options)
    builder = {"train": _dry_train, "waveq": _dry_waveq, "dcq": _dry_dcq, "search": _dry_search}[exp.command]
    result = builder(dataclasses.replace(exp, options=dataclasses.replace(exp.options, device="cpu")))
    if result.stand_in:
        reporter.warn(f"dry run: {result.stand_in}")
    notes = "".join(f" Note: {n}." for n in exp.notes)
    claim = exp.paper.get("claim")
    paper = f" Paper: {' '.join(str(claim).split())}" if claim else ""
    result.summary = (f"{exp.source} ({exp.command}, dry run, nothing trained or written): {result.summary}"
                      f"{_device_note(exp.options.device)}{notes} Would write {exp.out()}.{paper}")
    return result


def _data_text(data: DatasetSplits, stand_in: str | None, fit_note: str) -> str:
    text = f"STAND-IN DATA: {stand_in}" if stand_in else f"data {data.name}: {data.description}"
    return f"{text}; {fit_note}"


def _dry_train(exp: Experiment) -> DryRun:
    o: TrainOptions = exp.options
    data, stand_in = dry_run_data(o.dataset, o.data_dir, o.seed, o.val_fraction)
    args, data, fit_note = fit_model_to_data(o.model, data, o.width_mult)
    net = args.build()
    init = _init_note(net, exp)
    plan = o.build_plan()
    details: dict[str, Any] = {"model_args": args.to_dict()}
    if plan is None:
        method = "float training"
    else:
        spec = QuantizerSpec(o.quantizer, scale=o.scale)
        quantize_(net, plan, spec)
        costs = model_costs(net)
        method = (f"{o.quantizer} QAT (scale {o.scale}), {_bits_text(net)}; average bits {costs.avg_bits:.2f}, "
                  f"packed {costs.size_bytes:,} B ({costs.compression:.1f}x smaller than float)")
        details.update(avg_bits=costs.avg_bits, size_bytes=costs.size_bytes)
        if o.sinreq is not None:
            from lowbit.runs.sinreq_hooks import quantized_run_hooks

            terms = quantized_run_hooks(o.sinreq, o.sinreq_schedule, o.sinreq_domain, o.sinreq_mode).loss_terms(net)
            penalty = float(sum(float(t.fn(net).detach()) for t in terms))
            method += (f"; SinReQ λ={o.sinreq:g} ({o.sinreq_schedule}, {o.sinreq_domain} domain, "
                       f"{o.sinreq_mode} mode), penalty {penalty:.4f} at the start")
            details["sinreq_penalty"] = penalty
    _forward(net, _batch(data), data.num_classes)
    lr = o.train_config().lr
    summary = (f"{o.model} ({_params(net):,} parameters) {init}; {_data_text(data, stand_in, fit_note)}. "
               f"Method: {method}. Schedule: {o.epochs} epochs, {o.optimizer} lr {lr:g} ({o.schedule}), "
               f"batch {o.batch_size}, weight decay {o.weight_decay:g}, seed {o.seed}"
               f"{f', validation share {o.val_fraction:g}' if o.val_fraction else ''}.")
    return DryRun(summary, stand_in, data.name, _params(net), details)


def _dry_waveq(exp: Experiment) -> DryRun:
    from lowbit.reg.waveq import WaveQ

    o: WaveQOptions = exp.options
    data, stand_in = dry_run_data(o.dataset, o.data_dir, o.seed)
    args, data, fit_note = fit_model_to_data(o.model, data)
    net = args.build()
    init = _init_note(net, exp)
    config = o.waveq_config()
    waveq = WaveQ(net, config)
    QuantizerSpec(o.quantizer, scale=o.scale)  # the fine-tune's quantizer
    model = waveq.wrap()
    _forward(model, _batch(data), data.num_classes)
    penalty, pressure = float(waveq.penalty().detach()), float(waveq.bit_pressure().detach())
    bits = ("the paper's sum of bits" if config.budget is None
            else f"a budget of {config.budget:g} average bits ({config.weighting})")
    summary = (f"{o.model} ({_params(net):,} parameters) {init}; {_data_text(data, stand_in, fit_note)}. "
               f"Method: WaveQ learns bits β (start {config.beta_init:g}, range {config.bits_min:g}-"
               f"{config.bits_max:g}, {config.rounding}) and scale α for {len(waveq.names)} layers "
               f"({len(waveq.pinned)} pinned at {config.pin_bits}: {', '.join(waveq.pinned)}), {o.quantizer} level "
               f"geometry ({o.domain} domain), λ_w {o.lambda_w:g}, bit pressure {bits} with c_β {o.lambda_beta:g}; "
               f"sinusoid {penalty:.4f} and "
               f"pressure {pressure:.3f} at the start. Schedule: {o.epochs} WaveQ epochs (lr {o.train_config().lr:g}), "
               f"then {o.finetune_epochs} fine-tune epochs with {o.quantizer} (scale {o.scale}, lr {o.finetune_lr:g}) "
               f"at the learned plan, activations {o.abits}; batch {o.batch_size}, seed {o.seed}.")
    return DryRun(summary, stand_in, data.name, _params(net), {"learned_layers": list(waveq.names),
                                                               "pinned": list(waveq.pinned)})


def _dry_dcq(exp: Experiment) -> DryRun:
    from lowbit.distill import describe, make_students, split, split_points, stitch
    from lowbit.runs.dcq_run import _check_data_fits

    o: DcqOptions = exp.options
    data, stand_in = dry_run_data(o.dataset, o.data_dir, o.seed)
    if o.teacher is not None and _present(o.teacher):
        teacher, args, spec, _ = load_model(o.teacher)
        if spec is not None and spec.name != NO_QUANTIZER:
            raise ConfigError(f"teacher {o.teacher} is a quantized model ({spec.name}); "
                              "DCQ starts from a float teacher")
        data_args, data, fit_note = fit_model_to_data(args.name, data, args.width_mult)
        _check_data_fits(args, data_args, o.dataset)
        init = f"float teacher from {o.teacher} (loaded)"
    else:
        if o.model is not None:
            name, width = o.model, o.width_mult
            init = f"float teacher trained first ({o.teacher_epochs} epochs, into OUT/teacher; random weights here)"
        elif exp.requires is not None:
            name, width = exp.requires.options.model, exp.requires.options.width_mult
            init = (f"float teacher from {o.teacher} (not there yet, written by `lowbit run {exp.requires.source}`; "
                    "random weights stand in for the dry run)")
        else:
            resolve_model_file(o.teacher)  # raises: missing, and nothing says which model it is
            raise AssertionError("unreachable")
        args, data, fit_note = fit_model_to_data(name, data, width)
        teacher = args.build()
    at = o.split_points() if o.split_at is not None else None
    sections = split(teacher, at, sections=o.sections, balance=o.balance, sample_input=sample_input(args))
    spec = QuantizerSpec(o.quantizer, scale=o.scale)
    students, _ = make_students(sections, o.build_plan(), spec)
    student = stitch(students)
    _forward(student, _batch(data), data.num_classes)
    config = o.dcq_config()
    labels = describe(sections)
    parts = ", ".join(f"{label} ({_params(s):,} params)" for label, s in zip(labels, sections))
    costs = model_costs(student)
    finetune = f", then {o.finetune_epochs} end-to-end fine-tune epochs" if o.finetune_epochs else ""
    summary = (f"{args.name} ({_params(teacher):,} parameters) {init}; {_data_text(data, stand_in, fit_note)}. "
               f"Method: DCQ cuts the teacher into {len(sections)} sections ({parts}; cut before "
               f"{', '.join(split_points(sections)) or 'nothing'}), each a {o.quantizer} student (scale {o.scale}), "
               f"{_bits_text(student)}; average bits {costs.avg_bits:.2f}, packed {costs.size_bytes:,} B; "
               f"{config.mode} mode, {config.loss} feature loss, {o.workers} worker(s). Schedule: {o.epochs} epochs "
               f"per section (lr {config.train.lr:g}){finetune}; batch {o.batch_size}, seed {o.seed}.")
    return DryRun(summary, stand_in, data.name, _params(teacher), {"sections": labels,
                                                                   "split_at": split_points(sections)})


def _dry_search(exp: Experiment) -> DryRun:
    from lowbit.search import SearchSpace

    o: SearchOptions = exp.options
    data, stand_in = dry_run_data(o.dataset, o.data_dir, o.seed, o.val_fraction)
    args, data, fit_note = fit_model_to_data(o.model, data)
    net = args.build()
    if o.init is None:
        init = f"float model trained first ({o.float_epochs} epochs into OUT/float, on train minus validation)"
    else:
        init = _init_note(net, exp)
    space = SearchSpace.from_model(net, o.bits(), o.pin_first_last, o.search_acts, o.acts())
    spec = o.spec()
    for w in sorted({min(space.bit_choices), max(space.bit_choices)}):  # the quantizer takes the extremes
        quantize_(copy.deepcopy(net), space.to_plan(space.uniform(w)), spec)
    for a in sorted({min(space.act_choices), max(space.act_choices)}) if space.act_choices else ():
        quantize_(copy.deepcopy(net), space.to_plan(space.uniform(act=a)), spec)
    if o.strategy == "releq":
        from lowbit.search.releq import PPOSettings

        PPOSettings(policy=o.policy)
    probe = copy.deepcopy(net)
    quantize_(probe, space.to_plan(space.uniform(max(space.bit_choices))), spec)
    _forward(probe, _batch(data), data.num_classes)
    reward = o.reward_config()
    budget = ", ".join(x for x in (f"{o.max_evals} plan evaluations" if o.max_evals else "",
                                   f"{o.time_limit:g} s" if o.time_limit else "") if x)
    val = len(data.val) if data.val is not None else 0
    agent = f" ({o.policy} PPO policy)" if o.strategy == "releq" else ""
    summary = (f"{o.model} ({_params(net):,} parameters), {init}; {_data_text(data, stand_in, fit_note)}. "
               f"Method: {o.strategy} search{agent} ")
    summary += (f"over {space.n_searched} of {len(space.layers)} layers"
                f"{' (first/last pinned at ' + str(space.pin_bits) + ')' if o.pin_first_last else ''}, "
                f"weight bits {', '.join(map(str, space.bit_choices))}"
                f"{'; activation bits ' + ', '.join(map(str, space.act_choices)) if space.act_choices else ''} "
                f"({space.n_plans:,} plans), {spec.name} quantizer; reward th {reward.th:g}, a {reward.a:g}, "
                f"b {reward.b:g}; budget {budget}. Each plan: {o.eval_steps} fine-tune steps on {o.eval_train_size:,} "
                f"train samples (lr {o.eval_lr:g}), accuracy on the validation split ({val:,} samples here, "
                f"share {o.val_fraction:g}); the best plan gets {o.finetune_epochs} fine-tune epochs "
                f"(lr {o.finetune_lr:g}) and one test accuracy; batch {o.batch_size}, seed {o.seed}.")
    return DryRun(summary, stand_in, data.name, _params(net), {"searched_layers": space.n_searched,
                                                               "n_plans": space.n_plans,
                                                               "layers": list(quantizable_layers(net))})


def experiment_paths(root: str | os.PathLike) -> list[Path]:
    """Every ``*.yaml`` under ``root`` (sorted)."""
    return sorted(Path(root).rglob("*.yaml"))


__all__ = ["COMMANDS", "Command", "DryRun", "EXPERIMENT_FILE", "Experiment", "STAND_IN_SHAPES",
           "check_device", "check_mapping", "dry_run", "dry_run_data", "experiment_paths", "link_dependency",
           "parse_override", "parse_overrides", "resolve_out", "run_experiment", "validate_options"]
