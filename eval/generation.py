"""Does the image show what the caption says? Oracle accuracy of generated Shapes images,
unCLIP against the GLIDE baseline (§5 and §7 of unCLIP, measured exactly in our world).

    python -m eval.generation                                  # the shipped stack
    python -m eval.generation --checkpoint runs/shapes         # one trained by `make train`

For seeded captions of single- and two-object scenes, from the held-out colour–shape pairs
(never seen in training: compositional generalisation) and from the training pairs (new
scenes), each method draws one image per caption at the decoder's base resolution, and the
Shapes oracle (`data/oracle.py`) checks colour, shape, size, position (one object), relation
and the object count; `all` is every attribute right. Methods:
- unCLIP with the diffusion prior, and with the AR prior (§2.2);
- the GLIDE baseline: the same decoder conditioned on the caption alone (§5);
- the decoder given the true z_i of a render of the caption (a ceiling for the priors).
Writes results/generation.csv, .json, .md and .png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from eval.metrics import (
    METHODS,
    available,
    generate,
    harness_parser,
    load_model,
    method_fn,
    save_figure,
    scene_set,
    write_results,
)
from unclip_repro.cli import run
from unclip_repro.data import oracle, shapes
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnCLIP

COMMAND = "python -m eval.generation"
ATTRIBUTES = ["colour", "shape", "size", "position", "relation", "count", "all"]


def scenes(n: int, n_objects: int, split: str, seed: int = 0) -> list[shapes.Scene]:
    """n seeded scenes of `n_objects` objects drawn from `split`: one caption set."""
    return scene_set("generation", n, seed, n_objects, split)[0]


CAPTION_METHODS = ("diffusion", "ar", "glide")  # the methods that start from the caption


@torch.no_grad()
def measure(
    model: UnCLIP,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 50,
    progress: bool = True,
    splits: tuple[str, ...] = ("heldout", "train"),
    methods: tuple[str, ...] = (*CAPTION_METHODS, "true"),
) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Per (method, objects, split): the fraction of images the oracle finds right, per
    attribute, and seconds per image. Also returns the single-object held-out images."""
    rows, gallery = [], {}
    sets = [(k, split) for k in (1, 2) for split in splits]
    names = available(model, list(methods))
    bar = tqdm(total=len(names) * len(sets) * n, desc="generating", disable=not progress)
    for name in names:
        fn = method_fn(model, name)
        for n_objects, split in sets:
            ss = scenes(n, n_objects, split, seed)
            captions = [shapes.caption(s) for s in ss]
            start = time.perf_counter()
            images = generate(fn, captions, ss, seed, batch_size, bar)
            seconds = (time.perf_counter() - start) / n
            scored = oracle.score_batch(images, captions).astype(float).mean()
            rows.append(
                {"method": METHODS[name], "objects": n_objects, "split": split, "n": n}
                | {a: scored.get(a, np.nan) for a in ATTRIBUTES}
                | {"s_per_image": seconds}
            )
            if (n_objects, split) == (1, "heldout"):
                gallery[METHODS[name]] = images
    bar.close()
    return pd.DataFrame(rows), gallery


def to_markdown(table: pd.DataFrame, command: str) -> str:
    """The table as Markdown: one block per caption set, percentages."""
    lines = [
        "# Oracle accuracy of generated images",
        "",
        f"Made by `{command}`. One image per caption at the decoder's base resolution; the",
        "Shapes oracle checks each attribute the caption states (`all`: every one right).",
        "`heldout`: colour–shape pairs never seen in training; `train`: seen pairs, new scenes.",
        "",
    ]
    for (k, split), part in table.groupby(["objects", "split"], sort=False):
        cols = [a for a in ATTRIBUTES if part[a].notna().any()]
        lines += [
            f"## {k} object{'s' * (k > 1)}, {split} captions (n = {int(part.n.iloc[0])})",
            "",
            "| method | " + " | ".join(cols) + " | s / image |",
            "|---|" + "---|" * (len(cols) + 1),
        ]
        for row in part.itertuples():
            cells = [f"{getattr(row, c):.0%}" for c in cols]
            lines.append(f"| {row.method} | " + " | ".join(cells) + f" | {row.s_per_image:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_gallery(
    gallery: dict[str, torch.Tensor], captions: list[str], path: Path, n: int = 8
) -> None:
    """One row per method: its first n held-out single-object images under their captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(gallery)
    n = min(n, *(len(images) for images in gallery.values()))
    fig, axes = plt.subplots(
        len(names), n, figsize=(1.6 * n, 1.75 * len(names) + 0.4), squeeze=False
    )
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(gallery[name][c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(captions[c].removeprefix("a "), fontsize=7, wrap=True)
        axes[r, 0].set_ylabel(name, fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = harness_parser(COMMAND, __doc__, 100)

    def body() -> None:
        args = p.parse_args(argv)
        model, start = load_model(args.checkpoint), time.perf_counter()
        n = args.num_captions
        table, gallery = measure(model, n, args.seed, args.batch_size)
        command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
        write_results(args.out, "generation", table, command, time.perf_counter() - start)
        write_text(Path(args.out) / "generation.md", to_markdown(table, command))
        captions = [shapes.caption(s) for s in scenes(n, 1, "heldout", args.seed)]
        plot_gallery(gallery, captions, Path(args.out) / "generation.png")
        print(to_markdown(table, command))

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
