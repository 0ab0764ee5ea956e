"""Training DCQ's student sections (METHODS.md section 4, step 3): one section on its teacher
features (``train_section``), and all of them in order or in worker processes (``train_sections``).

The loss of a section that is not the last is a feature regression (MSE, L1 or smooth-L1, by
default in units of the teacher features' RMS at that boundary); the last section trains on the
labels plus optional logit distillation. Each section is seeded from (seed, section index) only,
so the order of training and the number of processes do not change the result.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.distill.config import FEATURE_LOSSES, DCQConfig, SectionResult, section_seed
from lowbit.distill.features import TeacherFeatures
from lowbit.distill.sections import describe, stitch
from lowbit.errors import ConfigError, NumericsError
from lowbit.nn import is_quantizer_param, quantizers_with_aux_loss
from lowbit.nn.convert import quantizable_layers
from lowbit.train import QUIET, MetricsWriter, Reporter
from lowbit.train.config import build_optimizer, build_scheduler


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
