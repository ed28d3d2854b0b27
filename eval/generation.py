"""Does the image show what the caption says? Oracle accuracy of generated Shapes images,
unCLIP against the GLIDE baseline (§5 and §7 of unCLIP, measured exactly in our world).

    python -m eval.generation --runs runs/shapes                  # trained runs
    python -m eval.generation --runs unclip_repro/checkpoints/shapes

For seeded captions of single- and two-object scenes, from the held-out colour–shape pairs
(never seen in training: compositional generalisation) and from the training pairs (new
scenes), each method draws one image per caption at the decoder's base resolution, and the
Shapes oracle (`data/oracle.py`) checks colour, shape, size, position (one object), relation
and the object count; `all` is every attribute right. Methods:
- unCLIP with the diffusion prior, and with the AR prior (§2.2);
- the GLIDE baseline: the same decoder conditioned on the caption alone (§5);
- the decoder given the true z_i of a render of the caption (a ceiling for the priors).
Writes results/generation.csv and results/generation.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from unclip_repro import checkpoint
from unclip_repro.data import oracle, shapes
from unclip_repro.pipeline import UnCLIP

COMMAND = "python -m eval.generation"
ATTRIBUTES = ["colour", "shape", "size", "position", "relation", "count", "all"]


def scenes(n: int, n_objects: int, split: str, seed: int = 0) -> list[shapes.Scene]:
    """n seeded scenes of `n_objects` objects drawn from `split`."""
    rng = np.random.default_rng([seed, n_objects, shapes.SPLITS.index(split)])
    return [shapes.random_scene(rng, n_objects, split) for _ in range(n)]


def caption_methods(model: UnCLIP, glide: str = "GLIDE baseline") -> dict:
    """name -> f(captions, scenes, seed) -> images (B, 3, R, R) at the base resolution, for
    the methods that start from the caption: unCLIP with each prior, and the GLIDE baseline
    (named `glide`)."""
    methods = {
        f"unCLIP, {name} prior": (
            lambda c, s, seed, name=name: model.generate(c, seed, prior=name, upsample=False)
        )
        for name in ("diffusion", "ar")
        if name in model.priors
    }
    if model.glide is not None:
        methods[glide] = lambda c, s, seed: model.generate_glide(c, seed, upsample=False)
    return methods


def _methods(model: UnCLIP) -> dict:
    """`caption_methods`, and the decoder given the true z_i of each caption's render."""

    def true_z(captions: list[str], ss: list[shapes.Scene], seed: int) -> torch.Tensor:
        R = model.decoder.resolution
        images = shapes.render_batch(ss, R)
        generator = torch.Generator().manual_seed(seed)
        z_i = model.clip.encode_image(images)
        return model.decoder.sample(model.encode_text(captions), z_i, generator=generator)

    methods = caption_methods(model)
    methods["decoder, true z_i (ceiling)"] = true_z
    return methods


@torch.no_grad()
def measure(
    model: UnCLIP,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 50,
    progress: bool = True,
    splits: tuple[str, ...] = ("heldout", "train"),
) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Per (method, objects, split): the fraction of images the oracle finds right, per
    attribute, and seconds per image. Also returns the single-object held-out images."""
    rows, gallery = [], {}
    sets = [(k, split) for k in (1, 2) for split in splits]
    methods = _methods(model)
    bar = tqdm(total=len(methods) * len(sets) * n, desc="generating", disable=not progress)
    for name, method in methods.items():
        for n_objects, split in sets:
            ss = scenes(n, n_objects, split, seed)
            captions = [shapes.caption(s) for s in ss]
            start, images = time.perf_counter(), []
            for i in range(0, n, batch_size):
                chunk = slice(i, i + batch_size)
                images.append(method(captions[chunk], ss[chunk], seed + i))
                bar.update(len(captions[chunk]))
            images = torch.cat(images)
            seconds = (time.perf_counter() - start) / n
            scored = oracle.score_batch(images, captions).astype(float).mean()
            rows.append(
                {"method": name, "objects": n_objects, "split": split, "n": n}
                | {a: scored.get(a, np.nan) for a in ATTRIBUTES}
                | {"s_per_image": seconds}
            )
            if (n_objects, split) == (1, "heldout"):
                gallery[name] = images
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/shapes", help="folder with clip/, decoder/, ...")
    parser.add_argument("--n", type=int, default=100, help="captions per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results", help="folder for generation.md / .csv")
    args = parser.parse_args(argv)
    try:
        model = UnCLIP.load(args.runs)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table, gallery = measure(model, args.n, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "generation.csv", index=False, float_format="%.4f")
    command = f"{COMMAND} --runs {args.runs} --n {args.n}"
    (out / "generation.md").write_text(to_markdown(table, command))
    captions = [shapes.caption(s) for s in scenes(args.n, 1, "heldout", args.seed)]
    plot_gallery(gallery, captions, out / "generation.png")
    print(to_markdown(table, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
