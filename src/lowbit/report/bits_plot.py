"""Learned bitwidth per layer over training (WaveQ, METHODS.md section 3): one line per layer of
its continuous β at the end of each epoch, with the final integer bits marked on the right."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_beta_curves(betas: Sequence[Mapping[str, float]], final_bits: Mapping[str, int], path: str | Path,
                     title: str = "") -> Path:
    """``betas``: one {layer: β} per epoch; ``final_bits``: the integer plan (pins included).
    Layers without a β (pinned) are listed in the legend at their fixed bits. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    learned = list(betas[0]) if betas else []
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    epochs = list(range(1, len(betas) + 1))
    for name in learned:
        line, = ax.plot(epochs, [b[name] for b in betas], marker="o", markersize=3,
                        label=f"{name} -> {final_bits.get(name, '?')} bits")
        if epochs and name in final_bits:
            ax.scatter([epochs[-1] + 0.3], [final_bits[name]], color=line.get_color(), marker="_", s=200)
    pinned = [n for n in final_bits if n not in learned]
    if pinned:
        ax.plot([], [], " ", label="pinned: " + ", ".join(f"{n} {final_bits[n]}" for n in pinned))
    ax.set_xlabel("epoch")
    ax.set_ylabel("bitwidth β")
    ax.set_ylim(0.5, 8.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or "learned bits per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
