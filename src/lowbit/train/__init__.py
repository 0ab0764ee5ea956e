"""Training: ``fit``/``evaluate``, checkpoints, metrics and progress. Knows nothing about quantization."""

from lowbit.train.checkpoint import load_checkpoint, save_checkpoint
from lowbit.train.config import TrainConfig, build_optimizer, build_scheduler
from lowbit.train.loop import FitResult, LossTerm, evaluate, fit
from lowbit.train.metrics import MetricsWriter, read_metrics
from lowbit.train.progress import QUIET, Reporter

__all__ = ["FitResult", "LossTerm", "MetricsWriter", "QUIET", "Reporter", "TrainConfig", "build_optimizer",
           "build_scheduler", "evaluate", "fit", "load_checkpoint", "read_metrics", "save_checkpoint"]
