"""``lowbit run --dry-run``: build an experiment's model, data (a synthetic stand-in of the right
shape where the real data is absent, announced), quantizer and method without training, and say
in one paragraph what the real run would do (:mod:`lowbit.runs.config_run` holds the configs)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.costs import model_costs
from lowbit.data import ArrayLoader, DatasetSplits, load_dataset
from lowbit.data.files import resolve_data_dir
from lowbit.data.registry import DATASETS
from lowbit.errors import ConfigError, DataError, unknown_name
from lowbit.nn import has_batch_norm, layer_bits, quantizable_layers, quantize_
from lowbit.quant.registry import QuantizerSpec
from lowbit.runs.build import check_data_fits
from lowbit.runs.config_run import Experiment, folder_present, validate_options
from lowbit.runs.dcq_run import DcqOptions, cut_teacher
from lowbit.runs.lifecycle import StartedRun, start_run
from lowbit.runs.model_io import float_model_args, load_float_weights, resolve_model_file
from lowbit.runs.search_run import SearchOptions, check_search
from lowbit.runs.train_run import TrainOptions
from lowbit.runs.waveq_run import WaveQOptions
from lowbit.train import QUIET, Reporter

# A dry run's stand-in for a file-based dataset whose files are not here: (channels, side, classes).
STAND_IN_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 10), "mnist-t10k": (1, 28, 10), "cifar10": (3, 32, 10), "svhn": (3, 32, 10),
}
STAND_IN_SIZES = {"n_train": 64, "n_test": 32}


@dataclass
class DryRun:
    """What a dry run built: the summary paragraph and facts tests can check."""

    summary: str
    stand_in: str | None  # why the data is a synthetic stand-in, or None for the real data
    data: str
    params: int
    details: dict[str, Any] = field(default_factory=dict)


def dry_run_data(dataset: str, data_dir: str | None, seed: int, val_fraction: float = 0.0,
                 tuning_fraction: float = 0.0) -> tuple[DatasetSplits, str | None]:
    """The real data when it is here, else a seeded synthetic stand-in of its shape (and why)."""
    if dataset not in DATASETS:
        raise unknown_name("dataset", dataset, DATASETS)
    splits = {"seed": seed, "val_fraction": val_fraction, "tuning_fraction": tuning_fraction}
    reason = None
    if DATASETS[dataset].uses_files:
        folder = resolve_data_dir(dataset, data_dir)
        if not folder.is_dir():
            reason = f"{dataset} is not on this machine (no folder {folder})"
        else:
            try:
                return load_dataset(dataset, data_dir, **splits), None
            except DataError as exc:
                reason = f"{dataset} could not be read ({exc})"
    if reason is None:
        return load_dataset(dataset, data_dir, **splits), None
    if dataset not in STAND_IN_SHAPES:
        raise ConfigError(f"{reason}, and no stand-in shape is known for it; give data_dir")
    channels, side, classes = STAND_IN_SHAPES[dataset]
    data = load_dataset("synthetic", **splits, num_classes=classes, in_channels=channels, input_size=side,
                        **STAND_IN_SIZES)
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


def _start(exp: Experiment, *, val_fraction: float = 0.0, model: str | None = None, width_mult: float = 1.0,
           load_start: bool = True) -> tuple[StartedRun, str | None, str]:
    """The run's own start (``lowbit.runs.lifecycle.start_run``) on the real data or a stand-in,
    with the float weights it starts from when they are here: (started, stand-in reason, init note)."""
    o = exp.options
    data, stand_in = dry_run_data(o.dataset, o.data_dir, o.seed, val_fraction, o.tuning_fraction)
    present = load_start and folder_present(exp.start)
    started = start_run(o, QUIET, None, dry_run=True, data=data, model=model, width_mult=width_mult,
                        init=exp.start if present else None)
    return started, stand_in, _init_note(exp, present)


def _init_note(exp: Experiment, present: bool, what: str = "float weights") -> str:
    start = exp.start
    if start is None:
        return "from random init"
    if present:
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


def _data_text(started: StartedRun, stand_in: str | None) -> str:
    data = started.data
    text = f"STAND-IN DATA: {stand_in}" if stand_in else f"data {data.name}: {data.description}"
    return f"{text}; {started.fit_note}"


def _dry_train(exp: Experiment) -> DryRun:
    o: TrainOptions = exp.options
    started, stand_in, init = _start(exp, val_fraction=o.val_fraction, width_mult=o.width_mult)
    net, data = started.model, started.data
    _, plan = o.quantize(net)  # the run's own quantization
    details: dict[str, Any] = {"model_args": started.args.to_dict()}
    if plan is None:
        method = "float training"
    else:
        costs = model_costs(net)
        method = (f"{o.quantizer} QAT (scale {o.scale}), {_bits_text(net)}; average bits {costs.avg_bits:.2f}, "
                  f"packed {costs.size_bytes:,} B ({costs.compression:.1f}x smaller than float)")
        details.update(avg_bits=costs.avg_bits, size_bytes=costs.size_bytes)
        if o.sinreq is not None:
            penalty = float(sum(float(t.fn(net).detach()) for t in o.hooks(None).loss_terms(net)))
            method += (f"; SinReQ λ={o.sinreq:g} ({o.sinreq_schedule}, {o.sinreq_domain} domain, "
                       f"{o.sinreq_mode} mode), penalty {penalty:.4f} at the start")
            details["sinreq_penalty"] = penalty
    _forward(net, _batch(data), data.num_classes)
    recipe = o.recipe(batch_norm=has_batch_norm(net))
    summary = (f"{o.model} ({_params(net):,} parameters) {init}; {_data_text(started, stand_in)}. "
               f"Method: {method}. Schedule: {o.epochs} epochs, {recipe.describe()} ({o.schedule}), "
               f"batch {o.batch_size}, weight decay {o.weight_decay:g}, seed {o.seed}"
               f"{f', validation share {o.val_fraction:g}' if o.val_fraction else ''}.")
    return DryRun(summary, stand_in, data.name, _params(net), details)


def _dry_waveq(exp: Experiment) -> DryRun:
    from lowbit.reg.waveq import WaveQ

    o: WaveQOptions = exp.options
    started, stand_in, init = _start(exp)
    net, data = started.model, started.data
    config = o.waveq_config()
    waveq = WaveQ(net, config)  # the run's own check of the layers and the budget
    _forward(waveq.wrap(), _batch(data), data.num_classes)
    penalty, pressure = float(waveq.penalty().detach()), float(waveq.bit_pressure().detach())
    bits = ("the paper's sum of bits" if config.budget is None
            else f"a budget of {config.budget:g} average bits ({config.weighting})")
    summary = (f"{o.model} ({_params(net):,} parameters) {init}; {_data_text(started, stand_in)}. "
               f"Method: WaveQ learns bits β (start {config.beta_init:g}, range {config.bits_min:g}-"
               f"{config.bits_max:g}, {config.rounding}) and scale α for {len(waveq.names)} layers "
               f"({len(waveq.pinned)} pinned at {config.pin_bits}: {', '.join(waveq.pinned)}), {o.quantizer} level "
               f"geometry ({o.domain} domain), λ_w {o.lambda_w:g}, bit pressure {bits} with c_β {o.lambda_beta:g}; "
               f"sinusoid {penalty:.4f} and "
               f"pressure {pressure:.3f} at the start. Schedule: {o.epochs} WaveQ epochs (lr {o.train_config().lr:g}), "
               f"then {o.finetune_epochs} fine-tune epochs with {o.quantizer} (scale {o.scale}, lr {o.finetune_config().lr:g}) "
               f"at the learned plan, activations {o.abits}; batch {o.batch_size}, seed {o.seed}.")
    return DryRun(summary, stand_in, data.name, _params(net), {"learned_layers": list(waveq.names),
                                                               "pinned": list(waveq.pinned)})


def _dcq_teacher(exp: Experiment) -> tuple[str, float, Any, str]:
    """(model name, width, the teacher's stored architecture or None, init note) of a DCQ dry run."""
    o: DcqOptions = exp.options
    if o.teacher is not None and folder_present(o.teacher):
        args = float_model_args(o.teacher, "teacher")
        return args.name, args.width_mult, args, f"float teacher from {o.teacher} (loaded)"
    if o.model is not None:
        return (o.model, o.width_mult, None,
                f"float teacher trained first ({o.teacher_epochs} epochs, into OUT/teacher; random weights here)")
    if exp.requires is not None:
        return (exp.requires.options.model, exp.requires.options.width_mult, None,
                f"float teacher from {o.teacher} (not there yet, written by `lowbit run {exp.requires.source}`; "
                "random weights stand in for the dry run)")
    resolve_model_file(o.teacher)  # raises: missing, and nothing says which model it is
    raise AssertionError("unreachable")


def _dry_dcq(exp: Experiment) -> DryRun:
    from lowbit.distill import describe, make_students, split_points, stitch

    o: DcqOptions = exp.options
    name, width, stored, init = _dcq_teacher(exp)
    started, stand_in, _ = _start(exp, model=name, width_mult=width, load_start=False)
    teacher, data = started.model, started.data
    if stored is not None:
        check_data_fits(stored, started.args, o.dataset)
        load_float_weights(teacher, o.teacher)
    spec, plan = QuantizerSpec(o.quantizer, scale=o.scale), o.build_plan()
    sections = cut_teacher(o, teacher, started.args, spec, plan)  # the run's own cut and checks
    students, _ = make_students(sections, plan, spec)
    student = stitch(students)
    _forward(student, _batch(data), data.num_classes)
    config = o.dcq_config()
    labels = describe(sections)
    parts = ", ".join(f"{label} ({_params(s):,} params)" for label, s in zip(labels, sections))
    costs = model_costs(student)
    finetune = f", then {o.finetune_epochs} end-to-end fine-tune epochs" if o.finetune_epochs else ""
    summary = (f"{name} ({_params(teacher):,} parameters) {init}; {_data_text(started, stand_in)}. "
               f"Method: DCQ cuts the teacher into {len(sections)} sections ({parts}; cut before "
               f"{', '.join(split_points(sections)) or 'nothing'}), each a {o.quantizer} student (scale {o.scale}), "
               f"{_bits_text(student)}; average bits {costs.avg_bits:.2f}, packed {costs.size_bytes:,} B; "
               f"{config.mode} mode, {config.loss} feature loss, {o.workers} worker(s)"
               f"{' on Ray' if o.executor == 'ray' else ''}. Schedule: {o.epochs} epochs "
               f"per section (lr {config.train.lr:g}){finetune}; batch {o.batch_size}, seed {o.seed}.")
    return DryRun(summary, stand_in, data.name, _params(teacher), {"sections": labels,
                                                                   "split_at": split_points(sections)})


def _dry_search(exp: Experiment) -> DryRun:
    o: SearchOptions = exp.options
    started, stand_in, init = _start(exp, val_fraction=o.val_fraction)
    net, data = started.model, started.data
    if o.init is None:
        init = f"float model trained first ({o.float_epochs} epochs into OUT/float, on train minus validation)"
    check_search(o, net)  # the run's own checks: every bit choice quantizes, the agent's settings hold
    space, spec = o.space(net), o.spec()
    probe = copy.deepcopy(net)
    quantize_(probe, space.to_plan(space.uniform(max(space.bit_choices))), spec)
    _forward(probe, _batch(data), data.num_classes)
    reward = o.reward_config()
    budget = ", ".join(x for x in (f"{o.max_evals} plan evaluations" if o.max_evals else "",
                                   f"{o.time_limit:g} s" if o.time_limit else "") if x)
    val = len(data.val) if data.val is not None else 0
    agent = f" ({o.policy} PPO policy)" if o.strategy == "releq" else ""
    summary = (f"{o.model} ({_params(net):,} parameters), {init}; {_data_text(started, stand_in)}. "
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
