"""A protocol comparison (``comparison.json``, written by ``lowbit compare``) as a Markdown table and
a plot: per arm the chosen setting, test accuracy mean ± sd over seeds, average bits, and the
paired difference against the baseline with its interval ("within noise" when it covers 0)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

COMPARISON_FILE = "comparison.json"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _setting(chosen: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items()) or "defaults"


def difference_text(diff: Mapping[str, Any] | None) -> str:
    """``+1.23 [0.10, 2.36] points`` and whether it is within noise (``-`` for the baseline)."""
    if diff is None:
        return "baseline"
    interval = (f"[{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]" if diff["low"] is not None
                else "(one seed: no interval)")
    verdict = "within noise" if diff["within_noise"] else ("better" if diff["mean"] > 0 else "worse")
    return f"{100 * diff['mean']:+.2f} {interval}, {verdict}"


def plans_text(arm: Mapping[str, Any]) -> str:
    """The distinct plans of an arm's final runs (one per seed), e.g. ``8,3,3,8 (3 seeds)``."""
    counts: dict[str, int] = {}
    for plan in (arm.get("plans") or {}).values():
        key = ",".join(map(str, plan))
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k} ({n} seed{'s' * (n != 1)})" for k, n in counts.items()) or "n/a"


HEADER = ("arm", "tuned over", "chosen", "test acc % (mean ± sd)", "avg bits", "plans (weight bits)",
          "vs baseline (points)")


def protocol_line(comparison: Mapping[str, Any]) -> str:
    """One sentence naming the hold-out, the trial budget, the seeds and the interval."""
    p = comparison["protocol"]
    return (f"Protocol: each arm tuned with {p['trials']} trial(s) on a hold-out of {p['tuning_fraction']:g} of "
            f"the training split (tuning seeds {', '.join(map(str, p['tuning_seeds']))}; the test split never "
            f"loaded while tuning), then its chosen setting run on seeds {', '.join(map(str, p['seeds']))} and "
            f"scored once on test. Differences are paired by seed against {comparison['baseline']}, with a "
            f"{100 * p['confidence']:g}% t-interval.")


def comparison_rows(comparison: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row of :data:`HEADER`'s cells per arm (the Markdown table and the HTML report share them)."""
    rows = []
    for arm in comparison["arms"]:
        s = arm["summary"]
        space = ", ".join(f"{k} {len(v)}" for k, v in arm["space"].items()) or "nothing"
        bits = sum(arm["avg_bits"].values()) / max(len(arm["avg_bits"]), 1)
        sd = f" ± {100 * s['sd']:.2f}" if s["sd"] is not None else ""
        sick = f" (unhealthy seeds {', '.join(map(str, arm['unhealthy_seeds']))})" if arm.get("unhealthy_seeds") else ""
        rows.append((arm["name"], f"{space} ({len(arm['trials'])} trials)", _setting(arm["chosen"]),
                     f"{_pct(s['mean'])}{sd} (n={s['n']}){sick}", f"{bits:.2f}", plans_text(arm),
                     difference_text(arm["versus_baseline"])))
    return rows


def comparison_table(comparison: Mapping[str, Any]) -> str:
    """The Markdown table, after a line naming the protocol."""
    lines = [protocol_line(comparison), "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(comparison)]
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: Mapping[str, Any], path: str | Path) -> Path:
    """Per arm: each seed's test accuracy (dots) and the mean ± sd (bar), baseline first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted(comparison["arms"], key=lambda a: a["name"] != comparison["baseline"])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(arms) + 1.5), 3.6))
    for i, arm in enumerate(arms):
        values = [100 * v for v in arm["test_accuracy"].values()]
        s = arm["summary"]
        ax.errorbar([i], [100 * s["mean"]], yerr=[100 * s["sd"]] if s["sd"] is not None else None, fmt="s",
                    color="C0" if arm["name"] == comparison["baseline"] else "C1", capsize=6)
        ax.scatter([i + 0.12] * len(values), values, s=14, color="0.35", zorder=3)
    ax.set_xticks(range(len(arms)), [a["name"] for a in arms], rotation=20, ha="right")
    ax.set_ylabel("test accuracy % (seeds, mean ± sd)")
    ax.set_title(f"protocol comparison against {comparison['baseline']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
