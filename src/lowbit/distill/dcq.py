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

import time
from collections.abc import Sequence

import torch
from torch import nn

from lowbit.distill.config import (FEATURE_LOSSES, MODES, SEED_STRIDE, DCQConfig, DCQResult, SectionResult,
                                   section_seed)
from lowbit.distill.features import TeacherFeatures
from lowbit.distill.section_training import (SectionJob, feature_rms, kd_loss, section_loss, train_section,
                                             train_sections)
from lowbit.distill.sections import copy_stitched, split, split_points, stitch
from lowbit.errors import ConfigError
from lowbit.nn import finetune_quantized, quantize_
from lowbit.nn.convert import quantizable_layers
from lowbit.plan import LayerBits, Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.recipes import DCQ_SCALE
from lowbit.train import QUIET, MetricsWriter, Reporter, evaluate

__all__ = [  # the section-training names stay importable from here
    "FEATURE_LOSSES", "MODES", "SEED_STRIDE", "DCQConfig", "DCQResult", "SectionJob", "SectionResult",
    "dcq_quantize", "feature_rms", "kd_loss", "make_students", "quantizer_spec", "section_loss", "section_plan",
    "section_seed", "train_section", "train_sections",
]


# ---- students ---------------------------------------------------------------------------------

def quantizer_spec(quantizer: QuantizerSpec | str) -> QuantizerSpec:
    """A spec as given, or for a name that quantizer with a learned output scale (module doc)."""
    return QuantizerSpec(quantizer, scale=DCQ_SCALE) if isinstance(quantizer, str) else quantizer


def make_students(teacher_sections: Sequence[nn.Module], plan: Plan | None = None,
                  quantizer: QuantizerSpec | str = "dorefa") -> tuple[list[nn.Module], dict[str, LayerBits]]:
    """Quantized copies of the teacher's sections and the resolved bits (full-model names).

    The stitched students carry exactly the plan ``quantize_`` gives the whole teacher (sections of
    a traced model hold its layers under their full paths, in its registration order).
    """
    points = split_points(teacher_sections)
    whole = copy_stitched(teacher_sections)
    resolved = quantize_(whole, plan, quantizer_spec(quantizer))
    return (split(whole, at=points) if points else [whole]), dict(resolved)


def section_plan(bits: dict[str, LayerBits], student: nn.Module) -> Plan:
    """The plan of one section: its layers' entries of the global resolved plan."""
    return Plan.from_layer_bits({name: bits[name] for name in quantizable_layers(student)})


# ---- the whole method -------------------------------------------------------------------------

def dcq_quantize(teacher: nn.Module | Sequence[nn.Module], train_loader, *, plan: Plan | None = None,
        quantizer: QuantizerSpec | str = "dorefa", split_at: Sequence[str] | None = None,
        sections: int | None = None, balance: str = "params", sample_input: torch.Tensor | None = None,
        config: DCQConfig | None = None, eval_loader=None, order: Sequence[int] | None = None,
        metrics: MetricsWriter | None = None, reporter: Reporter = QUIET) -> DCQResult:
    """Quantize ``teacher`` with DCQ and return the stitched quantized network and the details.

    ``teacher``: a float ``nn.Sequential``, or any torch.fx-traceable model (cut by ``split_at`` or
    ``sections``/``balance``, see :func:`lowbit.distill.sections.split`), or a list of its sections. ``train_loader`` yields
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
        result.finetune_history = finetune_quantized(model, train_loader, config.finetune, eval_loader=eval_loader,
                                                     metrics=metrics, reporter=reporter)
        if eval_loader is not None:
            result.accuracy = evaluate(model, eval_loader, config.finetune.device)[1]
            reporter.log(f"fine-tuned: test accuracy {100 * result.accuracy:.2f}%")
    return result

