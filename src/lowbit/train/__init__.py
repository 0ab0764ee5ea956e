"""Training: ``fit``/``evaluate``, the shared optimizer step, checkpoints, metrics and progress.
Knows nothing about quantization."""

from lowbit.train.checkpoint import load_checkpoint, save_checkpoint
from lowbit.train.config import TrainConfig, build_optimizer, build_scheduler
from lowbit.train.loop import FitResult, evaluate, fit
from lowbit.train.metrics import MetricsWriter, read_metrics
from lowbit.train.progress import QUIET, Reporter
from lowbit.train.step import NonFiniteLoss, Stepper, StepRun, train_budget, train_steps, with_terms
from lowbit.train.terms import LossTerm

__all__ = ["FitResult", "LossTerm", "MetricsWriter", "NonFiniteLoss", "QUIET", "Reporter", "StepRun", "Stepper",
           "TrainConfig", "build_optimizer", "build_scheduler", "evaluate", "fit", "load_checkpoint",
           "read_metrics", "save_checkpoint", "train_budget", "train_steps", "with_terms"]
