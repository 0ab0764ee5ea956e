"""Plots of a per-layer bitwidth search, ReLeQ (Elthakeb et al.), METHODS.md section 5: the reward
over the search, the bits of the chosen plan per layer, and accuracy vs average bits of every
evaluated plan with the Pareto set highlighted. Each function takes plain numbers and writes a PNG."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_rewards(rewards: Sequence[float], path: str | Path, title: str = "", xlabel: str = "episode") -> Path:
    """Reward per episode (ReLeQ) or per evaluated plan (random, greedy), with the running best."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    steps = list(range(1, len(rewards) + 1))
    best, running = float("-inf"), []
    for r in rewards:
        best = max(best, r)
        running.append(best)
    ax.plot(steps, rewards, marker="o", markersize=3, linewidth=1, alpha=0.7, label="reward")
    ax.plot(steps, running, linewidth=2, label="best so far")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ReLeQ reward")
    ax.set_ylim(-1.1, max(1.0, max(rewards, default=1.0)) + 0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "reward over the search")
    return _save(fig, path)


def plot_plan_bits(weight_bits: Mapping[str, int], path: str | Path, title: str = "",
                   act_bits: Mapping[str, int] | None = None, pinned: Collection[str] = ()) -> Path:
    """Bars of each layer's weight bits (and activation bits when given; 32 = float is left out).
    Pinned layers are hatched."""
    plt = _pyplot()
    names = list(weight_bits)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2.0), 4.0))
    width = 0.4 if act_bits is not None else 0.7
    xs = list(range(len(names)))
    shift = -width / 2 if act_bits is not None else 0.0
    w_x = [x + shift for x in xs]
    searched = [i for i, n in enumerate(names) if n not in pinned]
    fixed = [i for i, n in enumerate(names) if n in pinned]
    ax.bar([w_x[i] for i in searched], [weight_bits[names[i]] for i in searched], width, color="C0",
           label="weight bits")
    if fixed:
        ax.bar([w_x[i] for i in fixed], [weight_bits[names[i]] for i in fixed], width, color="C0", hatch="//",
               edgecolor="white", label="weight bits (pinned)")
    if act_bits is not None:
        acts = [act_bits.get(n, 32) for n in names]
        ax.bar([x + width / 2 for x, a in zip(xs, acts) if a < 32], [a for a in acts if a < 32], width, color="C1",
               label="activation bits")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("bits")
    ax.set_ylim(0, 10)  # room for the legend above the 8-bit bars
    ax.set_yticks(range(0, 9))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.set_title(title or "bits per layer")
    return _save(fig, path)


def plot_pareto(points: Sequence[tuple[float, float]], front: Sequence[tuple[float, float]], path: str | Path,
                title: str = "", best: tuple[float, float] | None = None) -> Path:
    """Accuracy vs average bits of every evaluated plan (``(avg_bits, accuracy)`` pairs), the
    Pareto set as a step line, and the best plan by reward starred."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    if points:
        ax.scatter([p[0] for p in points], [100 * p[1] for p in points], s=14, alpha=0.5, label="evaluated plans")
    if front:
        ordered = sorted(front)
        ax.step([p[0] for p in ordered], [100 * p[1] for p in ordered], where="post", color="C3", linewidth=1.5)
        ax.scatter([p[0] for p in ordered], [100 * p[1] for p in ordered], s=30, color="C3", label="Pareto set")
    if best is not None:
        ax.scatter([best[0]], [100 * best[1]], s=160, marker="*", color="C2", zorder=5, label="best by reward")
    ax.set_xlabel("average weight bits")
    ax.set_ylabel("validation accuracy after the short fine-tune (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "accuracy vs bits")
    return _save(fig, path)


def write_search_plots(plots: Path, outcome: Any, space: Any, bits: Mapping[str, Any], title: str) -> None:
    """A search's rewards.png (per episode for ReLeQ, else per evaluated plan), bits.png (the best
    plan, pinned layers marked) and pareto.png (evaluated plans, front and best) under ``plots``."""
    episodes = outcome.settings.get("episode_rewards")
    if outcome.strategy == "releq" and episodes is not None:
        plot_rewards(episodes, plots / "rewards.png", f"{title}: reward per episode")
    else:
        plot_rewards([r.reward for r in outcome.records], plots / "rewards.png",
                     f"{title}: reward per evaluated plan", xlabel="evaluated plan")
    pinned = [n for n in space.layer_names if n not in space.searched_names]
    plot_plan_bits({n: b.weight for n, b in bits.items()}, plots / "bits.png", f"{title}: best plan",
                   act_bits={n: b.act for n, b in bits.items()} if space.search_acts else None, pinned=pinned)
    best = outcome.best
    plot_pareto([(r.avg_bits, r.accuracy) for r in outcome.records], [(r.avg_bits, r.accuracy) for r in outcome.pareto],
                plots / "pareto.png", f"{title}: evaluated plans",
                best=None if best is None else (best.avg_bits, best.accuracy))
