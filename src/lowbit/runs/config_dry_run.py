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
from lowbit.quant.registry import NO_QUANTIZER, QuantizerSpec
from lowbit.runs.build import check_data_fits, fit_model_to_data
from lowbit.runs.config_run import Experiment, folder_present, validate_options
from lowbit.runs.dcq_run import DcqOptions, sample_input
from lowbit.runs.model_io import load_float_weights, load_model, resolve_model_file
from lowbit.runs.search_run import SearchOptions
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
    if folder_present(start):
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

            terms = quantized_run_hooks(o.sinreq, o.sinreq_schedule, o.sinreq_domain, o.sinreq_mode,
                                        o.sinreq_train_quantizer).loss_terms(net)
            penalty = float(sum(float(t.fn(net).detach()) for t in terms))
            method += (f"; SinReQ λ={o.sinreq:g} ({o.sinreq_schedule}, {o.sinreq_domain} domain, "
                       f"{o.sinreq_mode} mode), penalty {penalty:.4f} at the start")
            details["sinreq_penalty"] = penalty
    _forward(net, _batch(data), data.num_classes)
    recipe = o.recipe(batch_norm=has_batch_norm(net))
    summary = (f"{o.model} ({_params(net):,} parameters) {init}; {_data_text(data, stand_in, fit_note)}. "
               f"Method: {method}. Schedule: {o.epochs} epochs, {recipe.describe()} ({o.schedule}), "
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
               f"then {o.finetune_epochs} fine-tune epochs with {o.quantizer} (scale {o.scale}, lr {o.finetune_config().lr:g}) "
               f"at the learned plan, activations {o.abits}; batch {o.batch_size}, seed {o.seed}.")
    return DryRun(summary, stand_in, data.name, _params(net), {"learned_layers": list(waveq.names),
                                                               "pinned": list(waveq.pinned)})


def _dry_dcq(exp: Experiment) -> DryRun:
    from lowbit.distill import describe, make_students, split, split_points, stitch

    o: DcqOptions = exp.options
    data, stand_in = dry_run_data(o.dataset, o.data_dir, o.seed)
    if o.teacher is not None and folder_present(o.teacher):
        teacher, args, spec, _ = load_model(o.teacher)
        if spec is not None and spec.name != NO_QUANTIZER:
            raise ConfigError(f"teacher {o.teacher} is a quantized model ({spec.name}); "
                              "DCQ starts from a float teacher")
        data_args, data, fit_note = fit_model_to_data(args.name, data, args.width_mult)
        check_data_fits(args, data_args, o.dataset)
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
