"""Statistics of a comparison over seeds (BENCHMARKS.md, "The protocol"): mean ± sd per arm, and the
paired difference against the baseline with a Student-t interval over seeds; "within noise" when
the interval covers 0."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from scipy import stats


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and count of one arm's per-seed scores."""

    mean: float
    sd: float
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return _json_ready(asdict(self))

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        n = len(values)
        mean = sum(values) / n if n else math.nan
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
        return cls(mean, sd, n)


@dataclass(frozen=True)
class PairedDifference:
    """``arm - baseline`` over the seeds both ran: mean, the interval at ``confidence``, and whether
    the interval covers 0 ("within noise")."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def within_noise(self) -> bool:
        return not (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float | int | bool | None]:
        """JSON-ready: an unbounded end (one seed) is None."""
        return {**_json_ready(asdict(self)), "within_noise": self.within_noise}


def paired_difference(arm: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference:
    """The paired difference over the seeds present in both (seed -> score). With one seed the
    interval is unbounded (nothing can be said about noise)."""
    seeds = sorted(set(arm) & set(baseline))
    diffs = [arm[s] - baseline[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        raise ValueError("no seed was run by both the arm and the baseline")
    summary = Summary.of(diffs)
    if n < 2:
        return PairedDifference(summary.mean, -math.inf, math.inf, n, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * summary.sd / math.sqrt(n)
    return PairedDifference(summary.mean, summary.mean - half, summary.mean + half, n, confidence)


def _json_ready(values: dict[str, float | int]) -> dict[str, float | int | None]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in values.items()}
