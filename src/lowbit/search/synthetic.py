"""A cheap, deterministic stand-in for the fine-tune evaluator of ReLeQ (Elthakeb et al.), METHODS.md
section 5, with a known answer: for tests, examples and agent smoke runs. No model is trained.

    acc(plan) = acc_float
                - slope * mean over searched fields of (b_max - bits) / (b_max - b_min)
                - drop  * (number of sensitive layers whose weight bits are below their floor,
                           plus activation floors when activations are searched)
                + noise * u(key),   u in [-1, 1] a fixed hash of the plan key and seed

clipped to [0, 1]. With a small ``slope`` (fewer bits cost little) and a large ``drop``, the
plan maximising the ReLeQ reward puts each sensitive layer at the smallest choice >= its floor
and every other searched field at ``b_min`` (:meth:`SyntheticEvaluator.optimum`); tests check
that claim by exhaustive search on small spaces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from lowbit.errors import ConfigError, did_you_mean
from lowbit.search.space import Choices, SearchSpace


class SyntheticEvaluator:
    def __init__(self, space: SearchSpace, *, acc_float: float = 0.9, sensitive: Mapping[str, int] | None = None,
                 act_sensitive: Mapping[str, int] | None = None, drop: float = 0.3, slope: float = 0.01,
                 noise: float = 0.0, seed: int = 0) -> None:
        if not 0 < acc_float <= 1:
            raise ConfigError(f"acc_float must be in (0, 1], got {acc_float}")
        if drop < 0 or slope < 0 or noise < 0:
            raise ConfigError("drop, slope and noise must be >= 0")
        self.space = space
        self.acc_float = float(acc_float)
        self.sensitive = self._floors(sensitive, "sensitive")
        self.act_sensitive = self._floors(act_sensitive, "act_sensitive")
        if self.act_sensitive and not space.search_acts:
            raise ConfigError("act_sensitive needs a space that searches activation bits")
        self.drop, self.slope, self.noise, self.seed = float(drop), float(slope), float(noise), int(seed)
        self.calls = 0

    def _floors(self, floors: Mapping[str, int] | None, what: str) -> dict[str, int]:
        out = dict(floors or {})
        for name in out:
            if name not in self.space.searched_names:
                hint = did_you_mean(name, self.space.searched_names)
                raise ConfigError(f"{what}: {name!r} is not a searched layer{hint}; "
                                  f"searched: {', '.join(self.space.searched_names)}")
        return out

    def __call__(self, choices: Choices) -> float:
        self.calls += 1
        choices = self.space.normalize(choices)
        span = max(self.space.b_max - self.space.b_min, 1)
        lost, fields, hits = 0.0, 0, 0
        for name, (w, a) in zip(self.space.searched_names, choices):
            lost += (self.space.b_max - w) / span
            fields += 1
            hits += w < self.sensitive.get(name, 0)
            if self.space.act_searched(name):
                lost += (self.space.b_max - a) / span
                fields += 1
                hits += a < self.act_sensitive.get(name, 0)
        acc = self.acc_float - self.slope * lost / fields - self.drop * hits + self.noise * self._u(choices)
        return min(max(acc, 0.0), 1.0)

    def _u(self, choices: Choices) -> float:
        if not self.noise:
            return 0.0
        digest = hashlib.sha256(f"{self.seed}:{self.space.key(choices)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**63 - 1.0

    def float_accuracy(self) -> float:
        return self.acc_float

    def optimum(self) -> Choices:
        """Each sensitive field at the smallest choice >= its floor, every other at ``b_min``."""
        def lowest(options: tuple[int, ...], floor: int) -> int:
            above = [b for b in options if b >= floor]
            return above[0] if above else options[-1]

        out = []
        for name in self.space.searched_names:
            w = lowest(self.space.bit_choices, self.sensitive.get(name, 0))
            a = lowest(self.space.act_choices, self.act_sensitive.get(name, 0)) if self.space.search_acts \
                else self.space.act_bits
            out.append((w, a))
        return self.space.normalize(out)

    def describe(self) -> dict[str, Any]:
        return {"class": "SyntheticEvaluator", "acc_float": self.acc_float, "sensitive": self.sensitive,
                "act_sensitive": self.act_sensitive, "drop": self.drop, "slope": self.slope, "noise": self.noise,
                "seed": self.seed}
