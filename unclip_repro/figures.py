"""Labelled image grids: one figure function for the notebooks and `results/demo/`.

A grid a student can read names what each tile is: a caption over a tile, a label per row
(the input, a method, a guidance scale) and per column (η, θ, k), and tiles drawn at least
64 px so a 32-px sample is not a smudge.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

MIN_TILE_PX = 64


def _to_hwc(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] (or [-1, 1] if any value is negative) -> (H, W, 3) in [0, 1]."""
    image = image.detach().float().cpu()
    if image.min() < 0:
        image = (image + 1) / 2
    return image.clamp(0, 1).permute(1, 2, 0)


def image_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    nrow: int,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    tile_inches: float = 1.2,
    title_width: int = 22,
) -> Figure:
    """A grid of images (N, 3, H, W), `nrow` to a row, with optional labels.

    `titles`: one per image, written over it; `row_labels` / `col_labels`: one per row / column,
    on the left / over the top row (titles and column labels wrap at `title_width` characters);
    `suptitle`: over all. Images in [0, 1], or in [-1, 1] when they hold negative values. Tiles
    are at least 64 px at the figure's dpi, drawn with nearest-neighbour so pixels stay pixels.
    """
    images = list(images)
    n = len(images)
    rows = (n + nrow - 1) // nrow
    dpi = plt.rcParams["figure.dpi"]
    tile = max(tile_inches, MIN_TILE_PX / dpi)
    title_lines = sum(
        max(len(textwrap.wrap(t, title_width)) or 1 for t in labels)
        for labels in (titles, col_labels)
        if labels is not None
    )
    extra = 0.2 * title_lines + 0.1
    fig, axes = plt.subplots(
        rows,
        nrow,
        figsize=(nrow * tile + (0.9 if row_labels is not None else 0), rows * (tile + extra)),
        squeeze=False,
    )
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i >= n:
            ax.set_axis_off()
            continue
        ax.imshow(_to_hwc(images[i]).numpy(), interpolation="nearest")
        label = []
        if col_labels is not None and i < nrow:
            label.append("\n".join(textwrap.wrap(col_labels[i], title_width)))
        if titles is not None:
            label.append("\n".join(textwrap.wrap(titles[i], title_width)))
        if label:
            ax.set_title("\n".join(label), fontsize=7)
    if row_labels is not None:
        for r, name in enumerate(row_labels):
            axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig
