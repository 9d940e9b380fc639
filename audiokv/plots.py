"""Figures (matplotlib is an optional dependency: ``pip install 'audiokv[plot]'``)."""

from __future__ import annotations

from pathlib import Path

from audiokv.heads import HeadScores


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'audiokv[plot]'") from None
    return plt


def plot_head_scores(scores: HeadScores, path: str | Path, marked: list[tuple[int, int]] = ()) -> None:
    """Heat map of calibrated head scores (layers x KV heads), optionally outlining some heads."""
    plt = _pyplot()
    layers, heads = scores.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * heads, 1.0 + 0.6 * layers))
    im = ax.imshow(scores.scores.numpy(), cmap="magma", vmin=0, aspect="auto")
    for layer in range(layers):
        for head in range(heads):
            value = scores.scores[layer, head].item()
            color = "black" if value > 0.6 * scores.scores.max().item() else "white"
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    for layer, head in marked:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="cyan", lw=2))
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(f"audio alignment: {scores.model}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
