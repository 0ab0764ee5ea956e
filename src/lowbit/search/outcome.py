"""What a bitwidth search returns, ReLeQ (Elthakeb et al.), METHODS.md section 5: the evaluated plans,
the best plan by the ReLeQ reward and the Pareto set of accuracy vs average bits.

- :func:`pareto_front`: the records no other record dominates, maximising accuracy and
  minimising ``avg_bits``; ``s`` dominates ``r`` when ``s.accuracy >= r.accuracy`` and
  ``s.avg_bits <= r.avg_bits`` with at least one strict. Records with equal (bits, accuracy)
  are all kept. Sorted by ``avg_bits`` ascending.
- :func:`hypervolume`: the 2-D area dominated by the points and bounded by the reference point
  ``(ref_bits, ref_acc)`` = (8 bits, accuracy 0) by default, i.e. the area of
  ``{(bits, acc): some point p has p.bits <= bits <= ref_bits and ref_acc <= acc <= p.acc}``.
  With points sorted by bits, ``HV = Σ_i (bits_{i+1} - bits_i) * (max acc of points up to i - ref_acc)``
  with ``bits_{n+1} = ref_bits``. Points at or beyond the reference contribute nothing. Larger is
  better; compare hypervolumes only under the same reference point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Union

from lowbit.errors import ConfigError

OUTCOME_FORMAT = "lowbit-search-outcome"
OUTCOME_VERSION = 1


@dataclass(frozen=True)
class EvalRecord:
    """One evaluated plan: key, choices (one (w, a) per searched layer), accuracy and costs."""

    key: str
    choices: tuple[tuple[int, int], ...]
    accuracy: float
    avg_bits: float
    weighted_bits: float
    wall_s: float = 0.0  # how long the evaluation took when it was made
    reward: float | None = None  # filled in by a search (needs the reward config and float accuracy)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["choices"] = [list(c) for c in self.choices]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRecord:
        return cls(key=str(data["key"]), choices=tuple((int(w), int(a)) for w, a in data["choices"]),
                   accuracy=float(data["accuracy"]), avg_bits=float(data["avg_bits"]),
                   weighted_bits=float(data["weighted_bits"]), wall_s=float(data.get("wall_s", 0.0)),
                   reward=None if data.get("reward") is None else float(data["reward"]))

    def with_reward(self, reward: float) -> EvalRecord:
        return replace(self, reward=float(reward))


Point = Union[EvalRecord, Sequence[float]]  # a record, or (avg_bits, accuracy)


def _xy(point: Point) -> tuple[float, float]:
    if isinstance(point, EvalRecord):
        return point.avg_bits, point.accuracy
    bits, acc = point
    return float(bits), float(acc)


def pareto_front(records: Iterable[EvalRecord]) -> list[EvalRecord]:
    """Non-dominated records (max accuracy, min avg bits), sorted by avg bits then accuracy (descending)."""
    items = list(records)
    front = []
    for r in items:
        dominated = any(s.accuracy >= r.accuracy and s.avg_bits <= r.avg_bits
                        and (s.accuracy > r.accuracy or s.avg_bits < r.avg_bits) for s in items)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r.avg_bits, -r.accuracy))


def hypervolume(front: Iterable[Point], ref_bits: float = 8.0, ref_acc: float = 0.0) -> float:
    """Area dominated by ``front`` (records or ``(avg_bits, accuracy)`` pairs) up to the reference point."""
    points = sorted((b, a) for b, a in map(_xy, front) if b < ref_bits and a > ref_acc)
    area, best = 0.0, ref_acc
    for i, (bits, acc) in enumerate(points):
        best = max(best, acc)
        next_bits = points[i + 1][0] if i + 1 < len(points) else ref_bits
        area += (next_bits - bits) * (best - ref_acc)
    return area


def best_by_reward(records: Iterable[EvalRecord]) -> EvalRecord | None:
    """Highest reward; ties go to fewer average bits, then higher accuracy, then the earlier record."""
    best = None
    for r in records:
        if r.reward is None:
            raise ConfigError(f"record {r.key} has no reward")
        if best is None or (r.reward, -r.avg_bits, r.accuracy) > (best.reward, -best.avg_bits, best.accuracy):
            best = r
    return best


@dataclass
class SearchOutcome:
    """A finished search (``strategy``: "releq", "random", "greedy", ...).

    ``records``: the distinct plans this search visited, in first-visit order, with rewards.
    ``evaluations``: new evaluations it paid for; ``cache_hits``: plans it got from the cache.
    """

    strategy: str
    records: list[EvalRecord]
    evaluations: int
    cache_hits: int
    wall_s: float
    acc_float: float
    reward_config: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)  # seed, budget, strategy options

    @property
    def best(self) -> EvalRecord | None:
        return best_by_reward(self.records)

    @property
    def pareto(self) -> list[EvalRecord]:
        return pareto_front(self.records)

    def hypervolume(self, ref_bits: float = 8.0, ref_acc: float = 0.0) -> float:
        return hypervolume(self.pareto, ref_bits, ref_acc)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"format": OUTCOME_FORMAT, "version": OUTCOME_VERSION, "strategy": self.strategy,
                "evaluations": self.evaluations, "cache_hits": self.cache_hits, "wall_s": self.wall_s,
                "acc_float": self.acc_float, "reward_config": dict(self.reward_config),
                "settings": dict(self.settings), "best": None if best is None else best.to_dict(),
                "pareto": [r.key for r in self.pareto], "hypervolume": self.hypervolume(),
                "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchOutcome:
        if data.get("format") != OUTCOME_FORMAT or data.get("version") != OUTCOME_VERSION:
            raise ConfigError(f"not a {OUTCOME_FORMAT} version {OUTCOME_VERSION} document")
        return cls(strategy=data["strategy"], records=[EvalRecord.from_dict(r) for r in data["records"]],
                   evaluations=int(data["evaluations"]), cache_hits=int(data["cache_hits"]),
                   wall_s=float(data["wall_s"]), acc_float=float(data["acc_float"]),
                   reward_config=dict(data["reward_config"]), settings=dict(data.get("settings", {})))
