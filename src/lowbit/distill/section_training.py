"""Training DCQ's student sections (METHODS.md section 4, step 3): one section on its teacher
features (``train_section``), and all of them in order or in worker processes (``train_sections``).

The loss of a section that is not the last is a feature regression (MSE, L1 or smooth-L1, by
default in units of the teacher features' RMS at that boundary); the last section trains on the
labels plus optional logit distillation. The steps are the shared ones of ``lowbit.train``
(``Stepper``, ``train_steps``). Each section is seeded from (seed, section index) only, so the
order of training and the number of processes do not change the result.
"""

from __future__ import annotations

import io
import multiprocessing
import pickle
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.distill.config import FEATURE_LOSSES, DCQConfig, SectionResult, section_seed
from lowbit.distill.features import TeacherFeatures
from lowbit.distill.sections import describe, restore_order, stitch
from lowbit.errors import ConfigError
from lowbit.executors import RayTasks
from lowbit.nn import aux_loss_terms, is_quantizer_param
from lowbit.nn.convert import quantizable_layers
from lowbit.train import QUIET, MetricsWriter, Reporter, Stepper, StepRun, train_steps


# ---- one section ------------------------------------------------------------------------------

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton logit distillation: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature ** 2


@dataclass
class SectionJob:
    """Everything one section's training needs; picklable, so it can go to a worker process."""

    index: int
    student: nn.Module
    features: TeacherFeatures
    config: DCQConfig
    label: str = ""
    before: nn.Module | None = None  # sequential mode: the trained students before this one

    @property
    def last(self) -> bool:
        return self.index == self.features.num_sections - 1


def train_section(job: SectionJob) -> SectionResult:
    """Train ``job.student`` in place on its teacher features; return its loss history.

    The steps are :func:`lowbit.train.train_steps` with the section's loss
    (:class:`SectionObjective`) and the quantizers' own loss terms; sections train without AMP or
    LR warm-up (``job.config.train.amp`` and ``warmup_epochs`` are not read).
    """
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
    stepper = Stepper(student, cfg, no_decay=is_quantizer_param)
    terms = aux_loss_terms(student)  # found once, not at every step
    if not job.last and job.config.feature_norm and cfg.epochs > 0:
        result.feature_rms = feature_rms(job.features, index)
    objective = SectionObjective(student, job.last, job.config, result.feature_rms)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        student.train()
        objective.reset()
        run = train_steps(stepper, job.features.batches(index, epoch, job.before), objective, terms=terms,
                          where=f"section {index + 1}, epoch {epoch + 1}")
        record = {"phase": "section", "section": index, "epoch": epoch, "lr": stepper.end_epoch(),
                  **objective.means(run)}
        record["epoch_s"] = time.perf_counter() - t0
        result.history.append(record)
    result.wall_s = time.perf_counter() - start
    return result


class SectionObjective:
    """A section's loss on a ``(x, target, y)`` batch: the feature loss (in units of ``unit``, the
    teacher features' RMS, when given) or, for the last section, cross-entropy plus the optional
    logit distillation; it sums the parts of the epoch for the metrics record."""

    def __init__(self, student: nn.Module, last: bool, config: DCQConfig, unit: float | None = None) -> None:
        self.student, self.last = student, last
        self.feature_loss = FEATURE_LOSSES[config.loss]
        self.unit = unit
        self.kd_weight, self.temperature = config.kd_weight, config.kd_temperature
        self.reset()

    def reset(self) -> None:
        """Start an epoch's sums."""
        self.ce = self.kd = 0.0
        self.correct = self.seen = 0

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, target, y = batch
        out = self.student(x)
        if not self.last:
            if self.unit is not None:
                return self.feature_loss(out / self.unit, target / self.unit)
            return self.feature_loss(out, target)
        ce = F.cross_entropy(out.float(), y)
        loss = ce
        self.ce += ce.item()
        if self.kd_weight > 0:
            kd = kd_loss(out.float(), target.float(), self.temperature)
            loss = loss + self.kd_weight * kd
            self.kd += kd.item()
        self.correct += int((out.argmax(1) == y).sum())
        self.seen += y.numel()
        return loss

    def means(self, run: StepRun) -> dict[str, Any]:
        """The epoch's mean loss per step (with the quantizers' terms) and, for the last section,
        its mean cross-entropy, KD loss and training accuracy."""
        n = max(run.steps, 1)
        record: dict[str, Any] = {"loss": run.loss_sum / n}
        if self.last:
            record.update(ce=self.ce / n, train_acc=self.correct / self.seen if self.seen else float("nan"))
            if self.kd_weight > 0:
                record["kd"] = self.kd / n
        return record


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
    restore_order(job.student)  # an unpickled GraphModule section holds its layers in graph order
    torch.set_num_threads(job.config.threads_per_worker)
    result = train_section(job)
    buffer = io.BytesIO()
    torch.save({"state": job.student.state_dict(), "result": asdict(result)}, buffer)
    return buffer.getvalue()


def _in_workers(blobs: list[bytes], config: DCQConfig, k: int) -> Iterator[bytes]:
    """:func:`_section_worker` of each pickled job, in order: in a spawned pool of ``config.workers``
    processes, or as Ray tasks (``lowbit.executors``: a dead worker's section is retrained)."""
    if config.executor == "ray":
        tasks = RayTasks(config.ray_address, num_cpus=config.workers * config.threads_per_worker)
        try:
            yield from tasks.map(_section_worker, blobs, num_cpus=config.threads_per_worker,
                                 name=lambda n: f"DCQ section job {n + 1}")
        finally:
            tasks.close()
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(config.workers, k), mp_context=context) as pool:
        futures = [pool.submit(_section_worker, blob) for blob in blobs]
        for future in futures:
            yield future.result()


# ---- all sections -----------------------------------------------------------------------------

def train_sections(students: Sequence[nn.Module], features: TeacherFeatures, config: DCQConfig, *,
                   order: Sequence[int] | None = None, metrics: MetricsWriter | None = None,
                   reporter: Reporter = QUIET) -> list[SectionResult]:
    """Train every student section in place (in ``order``, or in ``config.workers`` processes, or as
    Ray tasks with ``config.executor == "ray"``); return their results in section order."""
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

    if (config.workers > 1 or config.executor == "ray") and k > 1:
        blobs = [pickle.dumps(SectionJob(i, students[i], features, config, labels[i])) for i in order]
        for i, blob in zip(order, _in_workers(blobs, config, k)):
            payload = torch.load(io.BytesIO(blob), weights_only=True)
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
