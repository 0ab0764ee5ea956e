"""DCQ: divide-and-conquer quantization by sectional distillation (METHODS.md section 4).

Elthakeb, Pilligundla, Cloninger & Esmaeilzadeh, "Divide and Conquer: Leveraging Intermediate
Feature Representations for Quantized Training of Neural Networks" (ICML 2020).

Given a float teacher ``T`` cut into sections ``T_1..T_K`` (``lowbit.distill.sections``):

1. students ``S_i`` = quantized copies of ``T_i``: the whole teacher is copied, ``quantize_``d
   with the global plan (so the first and last layers of the *network* keep their 8-bit pin and
   every layer keeps its full-model name and output scale), then cut at the same points;
2. each section minimises ``L(S_i(a_{i-1}), t_i)`` where ``t_i`` is the teacher's feature at
   boundary ``i`` and ``L`` is MSE, L1 or smooth-L1 (mean over elements), computed by default on
   ``S_i(a) / r_i`` and ``t_i / r_i`` with ``r_i`` the RMS of the teacher's features at that
   boundary over the training set (see "Feature scale" below). ``a_{i-1}`` is the
   teacher's feature at boundary ``i-1`` (mode ``independent``, the paper) or the output of the
   already trained students ``S_{i-1}(...S_1(x))`` in eval mode (mode ``sequential``, the
   authors' released code). The last section trains on the labels instead:
   ``CE(S_K(a), y) + kd_weight * T^2 * KL(softmax(t_K / T) || softmax(S_K(a) / T))``
   (Hinton et al. 2015 logit distillation; ``kd_weight = 0`` by default);
3. stitch ``S_1..S_K`` into one quantized network, evaluate, optionally fine-tune end to end
   with ``lowbit.train.fit``.

Output scale (a deliberate choice): a quantizer given by name gets ``scale="learned"``. A section
must reproduce the teacher's features at its boundary *in magnitude*, and DoReFa/WRPN at scale
``max`` tie the quantized weights' magnitude to ``max|w|`` (DoReFa's 2-bit levels are ±1/3 and ±1
of it, so most weights grow about 2-3x), which feature regression cannot undo without a learned
scale: on LeNet-5 (no batch norm) DoReFa w2 sections at ``auto`` stall at a large feature loss and
the stitched network collapses. Pass a ``QuantizerSpec`` to choose another scale. TWN and LSQ carry
their own scales and ignore it.

Feature scale (a deliberate choice; ``feature_norm=False`` gives the plain loss): features at
different boundaries and in different models differ in magnitude by orders (LeNet-5's fc3
activations have a mean square of about 7, a BN'd conv's about 0.5), so one learning rate cannot
suit plain MSE everywhere: at SGD lr 0.01 the first LeNet-5 section diverged into dead ReLUs.
Measured in units of ``r_i`` (a constant per section, so the minimiser is the paper's), the loss
is scale-free and the learning rate that suits plain QAT suits every section.

Determinism: a section's training depends only on the teacher, its own student and the seed
``section_seed(seed, i)`` (data order comes from the loader's (seed, epoch)), so in
``independent`` mode sections can be trained in any order or in ``workers`` spawned processes
(each at ``threads_per_worker`` torch threads) with bitwise the same result as one process
running at the same number of threads.
"""

from __future__ import annotations

import copy
import io
import math
import multiprocessing
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.distill.features import TeacherFeatures
from lowbit.distill.sections import describe, split, split_points, stitch
from lowbit.errors import ConfigError, NumericsError, did_you_mean
from lowbit.nn import is_quantizer_param, quantize_, quantizers_with_aux_loss
from lowbit.nn.convert import quantizable_layers
from lowbit.plan import LayerBits, Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.train import QUIET, LossTerm, MetricsWriter, Reporter, TrainConfig, evaluate, fit
from lowbit.train.config import build_optimizer, build_scheduler

MODES = ("independent", "sequential")
FEATURE_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}
SEED_STRIDE = 1_000_003


def section_seed(seed: int, index: int) -> int:
    """The torch seed of section ``index`` (0-based); ``index = K`` seeds the fine-tune."""
    return seed * SEED_STRIDE + index + 1


def _choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown DCQ {what} {value!r}{did_you_mean(str(value), choices)}; "
                          f"choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class DCQConfig:
    """How DCQ trains. ``train`` holds the per-section hyper-parameters (epochs, lr, optimizer,
    schedule, weight decay, device); ``finetune`` (None: no fine-tune) the end-to-end ones."""

    mode: str = "independent"
    loss: str = "mse"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=0.01))
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    workers: int = 1
    threads_per_worker: int = 1
    seed: int = 0
    feature_cache: str | None = None
    feature_norm: bool = True  # feature losses in units of the teacher features' RMS (module doc)
    finetune: TrainConfig | None = None

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("loss", self.loss, tuple(FEATURE_LOSSES))
        for name in ("workers", "threads_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DCQ {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"DCQ seed must be an integer >= 0, got {self.seed!r}")
        if self.mode == "sequential" and self.workers > 1:
            raise ConfigError("sequential mode trains each section on the outputs of the ones before it, "
                              "one after the other; use mode 'independent' for parallel workers")
        if not self.kd_weight >= 0:
            raise ConfigError(f"kd_weight must be >= 0, got {self.kd_weight}")
        if not self.kd_temperature > 0:
            raise ConfigError(f"kd_temperature must be > 0, got {self.kd_temperature}")


@dataclass
class SectionResult:
    """One trained section: which children and layers it holds, its loss per epoch, its time."""

    index: int
    label: str
    layers: list[str]
    params: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    feature_rms: float | None = None  # r_i, the unit of the feature loss (None: plain loss, last section)

    @property
    def final_loss(self) -> float | None:
        return self.history[-1]["loss"] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        fields = {"index": self.index, "children": self.label, "layers": self.layers, "params": self.params,
                  "losses": [r["loss"] for r in self.history], "final_loss": self.final_loss,
                  "wall_s": self.wall_s, "feature_rms": self.feature_rms}
        if self.history and "train_acc" in self.history[-1]:
            fields["final_train_acc"] = self.history[-1]["train_acc"]
        return fields


@dataclass
class DCQResult:
    model: nn.Sequential  # the stitched quantized network
    students: list[nn.Sequential]
    split_at: list[str]
    bits: dict[str, LayerBits]  # resolved plan, full-model layer names
    sections: list[SectionResult]
    sections_wall_s: float
    stitched_accuracy: float | None = None
    accuracy: float | None = None  # after the fine-tune (= stitched_accuracy without one)
    finetune_history: list[dict[str, Any]] = field(default_factory=list)


# ---- students ---------------------------------------------------------------------------------

def quantizer_spec(quantizer: QuantizerSpec | str) -> QuantizerSpec:
    """A spec as given, or for a name that quantizer with a learned output scale (module doc)."""
    return QuantizerSpec(quantizer, scale="learned") if isinstance(quantizer, str) else quantizer


def make_students(teacher_sections: Sequence[nn.Module], plan: Plan | None = None,
                  quantizer: QuantizerSpec | str = "dorefa") -> tuple[list[nn.Sequential], dict[str, LayerBits]]:
    """Quantized copies of the teacher's sections and the resolved bits (full-model names).

    The stitched students carry exactly the plan ``quantize_`` gives the whole teacher.
    """
    points = split_points(teacher_sections)
    whole = copy.deepcopy(stitch(teacher_sections))
    resolved = quantize_(whole, plan, quantizer_spec(quantizer))
    return (split(whole, at=points) if points else [whole]), dict(resolved)


def section_plan(bits: dict[str, LayerBits], student: nn.Module) -> Plan:
    """The plan of one section: its layers' entries of the global resolved plan."""
    return Plan.from_layer_bits({name: bits[name] for name in quantizable_layers(student)})


# ---- one section ------------------------------------------------------------------------------

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton logit distillation: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature ** 2


@dataclass
class SectionJob:
    """Everything one section's training needs; picklable, so it can go to a worker process."""

    index: int
    student: nn.Sequential
    features: TeacherFeatures
    config: DCQConfig
    label: str = ""
    before: nn.Module | None = None  # sequential mode: the trained students before this one

    @property
    def last(self) -> bool:
        return self.index == self.features.num_sections - 1


def train_section(job: SectionJob) -> SectionResult:
    """Train ``job.student`` in place on its teacher features; return its loss history."""
    start = time.perf_counter()
    torch.manual_seed(section_seed(job.config.seed, job.index))
    student, cfg, index = job.student, job.config.train, job.index
    student.to(cfg.device)
    result = SectionResult(index, job.label, list(quantizable_layers(student)),
                           sum(p.numel() for p in student.parameters()))
    if job.before is not None:
        job.before.eval()
    if not any(p.requires_grad for p in student.parameters()):  # e.g. a pooling-only section
        result.wall_s = time.perf_counter() - start
        return result
    optimizer = build_optimizer(student, cfg, is_quantizer_param)
    scheduler = build_scheduler(optimizer, cfg)
    aux = quantizers_with_aux_loss(student)
    feature_loss = FEATURE_LOSSES[job.config.loss]
    if not job.last and job.config.feature_norm and cfg.epochs > 0:
        result.feature_rms = feature_rms(job.features, index)
        unit = result.feature_rms
        plain_loss = feature_loss
        feature_loss = lambda out, target: plain_loss(out / unit, target / unit)  # noqa: E731
    kd_weight, temperature = job.config.kd_weight, job.config.kd_temperature
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        student.train()
        sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0}
        batches = correct = seen = 0
        for x, target, y in job.features.batches(index, epoch, job.before):
            out = student(x)
            if job.last:
                ce = F.cross_entropy(out.float(), y)
                loss = ce
                sums["ce"] += ce.item()
                if kd_weight > 0:
                    kd = kd_loss(out.float(), target.float(), temperature)
                    loss = loss + kd_weight * kd
                    sums["kd"] += kd.item()
                correct += int((out.argmax(1) == y).sum())
                seen += y.numel()
            else:
                loss = feature_loss(out, target)
            if aux:
                loss = loss + torch.stack([q.aux_loss() for q in aux]).sum()
            value = loss.item()
            if not math.isfinite(value):
                raise NumericsError(f"section {index + 1}: non-finite loss ({value}) at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            optimizer.step()
            sums["loss"] += value
            batches += 1
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        n = max(batches, 1)
        record: dict[str, Any] = {"phase": "section", "section": index, "epoch": epoch, "lr": lr,
                                  "loss": sums["loss"] / n}
        if job.last:
            record.update(ce=sums["ce"] / n, train_acc=correct / seen if seen else float("nan"))
            if kd_weight > 0:
                record["kd"] = sums["kd"] / n
        record["epoch_s"] = time.perf_counter() - t0
        result.history.append(record)
    result.wall_s = time.perf_counter() - start
    return result


@torch.no_grad()
def feature_rms(features: TeacherFeatures, index: int) -> float:
    """RMS of the teacher's features at boundary ``index + 1`` over one epoch of the training data
    (float64 sums; 1.0 if they are all zero)."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for _, target, _ in features.batches(index, 0):
        total += target.double().pow(2).sum().cpu()
        count += target.numel()
    rms = (total / max(count, 1)).sqrt().item()
    return rms if rms > 0 else 1.0


@torch.no_grad()
def section_loss(student: nn.Module, features: TeacherFeatures, index: int, loss: str = "mse",
                 epoch: int = 0) -> float:
    """Mean plain feature loss (cross-entropy for the last section) of ``student`` in eval mode."""
    was_training = student.training
    student.eval()
    total, batches = 0.0, 0
    last = index == features.num_sections - 1
    for x, target, y in features.batches(index, epoch):
        out = student(x)
        total += (F.cross_entropy(out.float(), y) if last else FEATURE_LOSSES[loss](out, target)).item()
        batches += 1
    student.train(was_training)
    return total / max(batches, 1)


def _section_worker(payload: bytes) -> bytes:
    """Worker process entry: unpickle a job, train it at the configured thread count, send back
    the trained state dict and the history (as a torch.save blob)."""
    job: SectionJob = pickle.loads(payload)
    torch.set_num_threads(job.config.threads_per_worker)
    result = train_section(job)
    buffer = io.BytesIO()
    torch.save({"state": job.student.state_dict(), "result": asdict(result)}, buffer)
    return buffer.getvalue()


# ---- all sections -----------------------------------------------------------------------------

def train_sections(students: Sequence[nn.Sequential], features: TeacherFeatures, config: DCQConfig, *,
                   order: Sequence[int] | None = None, metrics: MetricsWriter | None = None,
                   reporter: Reporter = QUIET) -> list[SectionResult]:
    """Train every student section in place (in ``order``, or in ``config.workers`` processes);
    return their results in section order."""
    k = len(students)
    if k != features.num_sections:
        raise ConfigError(f"{k} student sections but the teacher has {features.num_sections}")
    order = list(range(k)) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(k)):
        raise ConfigError(f"order must list every section index 0..{k - 1} once, got {order}")
    if config.mode == "sequential" and order != list(range(k)):
        raise ConfigError("sequential mode trains the sections in network order")
    labels = describe(students)
    results: list[SectionResult | None] = [None] * k

    def done(result: SectionResult) -> None:
        results[result.index] = result
        first, last = (result.history[0]["loss"], result.final_loss) if result.history else (None, None)
        change = f"loss {first:.4g} -> {last:.4g}" if result.history else "nothing to train"
        reporter.log(f"section {result.index + 1}/{k} ({result.label}): {change}  {result.wall_s:.1f}s")

    if config.workers > 1 and k > 1:
        jobs = {i: SectionJob(i, students[i], features, config, labels[i]) for i in order}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(config.workers, k), mp_context=context) as pool:
            futures = {i: pool.submit(_section_worker, pickle.dumps(jobs[i])) for i in order}
            for i in order:
                payload = torch.load(io.BytesIO(futures[i].result()), weights_only=True)
                students[i].load_state_dict(payload["state"])
                done(SectionResult(**payload["result"]))
    else:
        for i in order:
            before = stitch(students[:i]) if config.mode == "sequential" and i > 0 else None
            done(train_section(SectionJob(i, students[i], features, config, labels[i], before)))
    if metrics is not None:
        for result in results:
            for record in result.history:
                metrics.write(record)
    return list(results)


# ---- the whole method -------------------------------------------------------------------------

def dcq_quantize(teacher: nn.Module | Sequence[nn.Module], train_loader, *, plan: Plan | None = None,
        quantizer: QuantizerSpec | str = "dorefa", split_at: Sequence[str] | None = None,
        sections: int | None = None, balance: str = "params", sample_input: torch.Tensor | None = None,
        config: DCQConfig | None = None, eval_loader=None, order: Sequence[int] | None = None,
        metrics: MetricsWriter | None = None, reporter: Reporter = QUIET) -> DCQResult:
    """Quantize ``teacher`` with DCQ and return the stitched quantized network and the details.

    ``teacher``: a float ``nn.Sequential`` (cut by ``split_at`` or ``sections``/``balance``, see
    :func:`lowbit.distill.sections.split`), or a list of its sections. ``train_loader`` yields
    ``(x, y)`` batches (an ``ArrayLoader`` for reproducible order and for feature caching);
    ``eval_loader`` (optional) gives the stitched and fine-tuned accuracies. The teacher itself is
    not changed.
    """
    config = config or DCQConfig()
    if isinstance(teacher, (list, tuple)):
        if split_at is not None or sections is not None:
            raise ConfigError("teacher is already a list of sections; do not give split_at or sections too")
        teacher_sections = list(teacher)
        stitch(teacher_sections)  # checks the sections chain and their names are unique
    else:
        if split_at is None and sections is None:
            raise ConfigError("give split points (split_at) or a number of sections")
        teacher_sections = split(teacher, split_at, sections=sections, balance=balance, sample_input=sample_input)
    spec = quantizer_spec(quantizer)
    students, bits = make_students(teacher_sections, plan, spec)
    features = TeacherFeatures(teacher_sections, train_loader, cache_dir=config.feature_cache,
                               device=config.train.device, reporter=reporter)
    start = time.perf_counter()
    section_results = train_sections(students, features, config, order=order, metrics=metrics, reporter=reporter)
    sections_wall = time.perf_counter() - start
    model = stitch(students).to(config.train.device)
    result = DCQResult(model, students, split_points(students), bits, section_results, sections_wall)
    if eval_loader is not None:
        result.stitched_accuracy = result.accuracy = evaluate(model, eval_loader, config.train.device)[1]
        reporter.log(f"stitched: test accuracy {100 * result.accuracy:.2f}%")
    if config.finetune is not None and config.finetune.epochs > 0:
        torch.manual_seed(section_seed(config.seed, len(students)))
        aux = quantizers_with_aux_loss(model)
        terms = [LossTerm("quantizer_aux", lambda m: torch.stack([q.aux_loss() for q in aux]).sum())] if aux else []
        history = fit(model, train_loader, config.finetune, eval_loader=eval_loader, loss_terms=terms,
                      callbacks=[lambda epoch, m: {"phase": "finetune"}], no_decay=is_quantizer_param,
                      metrics=metrics, reporter=reporter).history
        result.finetune_history = history
        if eval_loader is not None:
            result.accuracy = evaluate(model, eval_loader, config.finetune.device)[1]
            reporter.log(f"fine-tuned: test accuracy {100 * result.accuracy:.2f}%")
    return result

