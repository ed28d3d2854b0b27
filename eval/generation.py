"""Does the image show what the caption says? Oracle accuracy of generated Shapes images,
unCLIP against the GLIDE baseline (§5 and §7 of unCLIP, measured exactly in our world).

    python -m eval.generation                                  # the shipped stack
    python -m eval.generation --checkpoint runs/shapes         # one trained by `make train`
    python -m eval.generation --methods true,glide --splits train --objects 1 \
        --set decoder.eta=0 --set decoder.sample_steps=25 --confusion --out /tmp/sampling

For seeded captions of single- and two-object scenes, from the held-out colour–shape pairs
(never seen in training: compositional generalisation) and from the training pairs (new
scenes), each method draws one image per caption at the decoder's base resolution, and the
Shapes oracle (`data/oracle.py`) checks colour, shape, size, position (one object), relation
and the object count; `all` is every attribute right. Methods:
- unCLIP with the diffusion prior, and with the AR prior (§2.2);
- the GLIDE baseline: the same decoder conditioned on the caption alone (§5);
- the decoder given the true z_i of a render of the caption (a ceiling for the priors);
- and, with `--methods`, the rest of `eval.metrics.METHODS`: the caption alone ("none") or
  the true z_i alone ("reconstruction") given to the decoder.
Two-object sets also say where the images go wrong (`FACTORS`): each named object drawn with
its own colour and shape, and the two drawn with one shape (or colour) where the caption names
two.
`--set` changes how the components draw (a sampling setting: the decoder's η, guidance and
steps, the priors' and upsamplers'; `eval.metrics.set_sampling`); `--confusion` adds, for
each single-object set, which shape the oracle reads for each shape (and size) asked.
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
    require_methods,
    save_figure,
    scene_set,
    set_sampling,
    write_results,
)
from unclip_repro.cli import UserError, run
from unclip_repro.config import parse_assignment
from unclip_repro.data import oracle, shapes
from unclip_repro.data.captions import wilson
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnCLIP

COMMAND = "python -m eval.generation"
ATTRIBUTES = ["colour", "shape", "size", "position", "relation", "count", "all"]
# two-object images, per caption: the object named first (second) drawn with its colour and
# shape; one shape (colour) drawn twice where the caption names two (what is bound to what:
# eval.attribute_binding)
FACTORS = ["first_bound", "second_bound", "shape_leak", "colour_leak"]


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
    objects: tuple[int, ...] = (1, 2),
    confusions: dict[tuple[str, str], pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Per (method, objects, split): the fraction of images the oracle finds right, per
    attribute, and seconds per image. Also returns the single-object held-out images. Given a
    dict `confusions`, fills it with `shape_confusion` per (method, split) of one object."""
    rows, gallery = [], {}
    sets = [(k, split) for k in objects for split in splits]
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
            factors = {}
            if n_objects == 2:
                per_image = [two_object_factors(x, s) for x, s in zip(images, ss, strict=True)]
                factors = pd.DataFrame(per_image).astype(float).mean().to_dict()
            rows.append(
                {"method": METHODS[name], "objects": n_objects, "split": split, "n": n}
                | {a: scored.get(a, np.nan) for a in ATTRIBUTES}
                | factors
                | {"s_per_image": seconds}
            )
            if (n_objects, split) == (1, "heldout"):
                gallery[METHODS[name]] = images
            if confusions is not None and n_objects == 1:
                confusions[METHODS[name], split] = shape_confusion(images, ss)
    bar.close()
    return pd.DataFrame(rows), gallery


def shape_confusion(images: torch.Tensor, scenes_: list[shapes.Scene]) -> pd.DataFrame:
    """Counts of the shape the oracle reads (columns; "none": no object found) in images of
    single-object scenes, per shape and size asked for (rows)."""
    drawn = [next(iter(oracle.detect(image)), None) for image in images]
    asked = pd.Series([s.objects[0].shape for s in scenes_], name="asked")
    size = pd.Series([s.objects[0].size for s in scenes_], name="size")
    read = pd.Series([d.shape if d else "none" for d in drawn], name="read")
    return pd.crosstab([asked, size], read)


def two_object_factors(image: torch.Tensor, scene: shapes.Scene) -> dict[str, bool]:
    """`FACTORS` of one image of a two-object scene, from the objects the oracle detects."""
    first, second = scene.objects  # in the caption's order
    found = oracle.detect(image)
    drawn = {(d.colour, d.shape) for d in found}
    two_shapes, two_colours = first.shape != second.shape, first.colour != second.colour
    return {
        "first_bound": (first.colour, first.shape) in drawn,
        "second_bound": (second.colour, second.shape) in drawn,
        "shape_leak": two_shapes and len(found) == 2 and found[0].shape == found[1].shape,
        "colour_leak": two_colours and len(found) == 2 and found[0].colour == found[1].colour,
    }


def interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z = 1.96) of a proportion p of n trials."""
    if n <= 0 or np.isnan(p):
        return np.nan, np.nan
    return wilson(p, n, z)


def to_markdown(
    table: pd.DataFrame,
    command: str,
    intervals: bool = False,
    confusions: dict[tuple[str, str], pd.DataFrame] | None = None,
) -> str:
    """The table as Markdown: one block per caption set, percentages (with `intervals`, each
    with its 95% Wilson interval), then each confusion table of `measure`."""
    lines = [
        "# Oracle accuracy of generated images",
        "",
        f"Made by `{command}`. One image per caption at the decoder's base resolution; the",
        "Shapes oracle checks each attribute the caption states (`all`: every one right).",
        "`heldout`: colour–shape pairs never seen in training; `train`: seen pairs, new scenes.",
        *(["Each cell: the share right (its 95% Wilson interval)."] if intervals else []),
        *(
            [
                "Two objects, where they go wrong: `first bound` / `second bound`: the object the",
                "caption names first / second drawn with its colour and shape; `shape leak` /",
                "`colour leak`: one shape / colour drawn twice where the caption names two.",
            ]
            if "first_bound" in table
            else []
        ),
        "",
    ]
    for (k, split), part in table.groupby(["objects", "split"], sort=False):
        cols = [a for a in ATTRIBUTES + FACTORS if a in part and part[a].notna().any()]
        lines += [
            f"## {k} object{'s' * (k > 1)}, {split} captions (n = {int(part.n.iloc[0])})",
            "",
            "| method | " + " | ".join(c.replace("_", " ") for c in cols) + " | s / image |",
            "|---|" + "---|" * (len(cols) + 1),
        ]
        for row in part.itertuples():
            cells = [f"{getattr(row, c):.0%}" for c in cols]
            if intervals:
                bounds = [interval(getattr(row, c), row.n) for c in cols]
                cells = [f"{x} ({a:.0%}–{b:.0%})" for x, (a, b) in zip(cells, bounds, strict=True)]
            lines.append(f"| {row.method} | " + " | ".join(cells) + f" | {row.s_per_image:.2f} |")
        lines.append("")
    for (method, split), counts in (confusions or {}).items():
        lines += [
            f"## {method}, 1 object, {split} captions: shape asked (rows) × shape read",
            "",
            counts.reset_index().to_markdown(index=False),
            "",
        ]
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
    default = ",".join((*CAPTION_METHODS, "true"))
    p.add_argument("--methods", help=f"of {', '.join(METHODS)} (default: {default}, as found)")
    p.add_argument("--splits", default="heldout,train", help="caption sets: heldout,train")
    p.add_argument("--objects", default="1,2", help="objects per scene: 1,2")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampling setting (repeat): decoder.eta=0, decoder.guidance=6, "
        "decoder.sample_steps=25, prior_diffusion.guidance=2, ...",
    )
    p.add_argument("--confusion", action="store_true", help="shape read per shape asked")

    def body() -> None:
        args = p.parse_args(argv)
        listed = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
        splits, methods = listed(args.splits), listed(args.methods or "")
        if bad := [x for x in splits if x not in ("heldout", "train")]:
            raise UserError(f"--splits takes heldout and/or train, got {', '.join(bad)}")
        if bad := [x for x in listed(args.objects) if x not in ("1", "2")]:
            raise UserError(f"--objects takes 1 and/or 2, got {', '.join(bad)}")
        objects = tuple(int(x) for x in listed(args.objects))
        if bad := [x for x in methods if x not in METHODS]:
            choices = ", ".join(METHODS)
            raise UserError(f"unknown method(s) {', '.join(bad)}; choose from: {choices}")
        model, start = load_model(args.checkpoint), time.perf_counter()
        set_sampling(model, dict(parse_assignment(a) for a in args.set))
        if methods:
            require_methods(model, list(methods), args.checkpoint)
        n, confusions = args.num_captions, {} if args.confusion else None
        table, gallery = measure(
            model,
            n,
            args.seed,
            args.batch_size,
            splits=splits,
            methods=methods or (*CAPTION_METHODS, "true"),
            objects=objects,
            confusions=confusions,
        )
        command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
        report = to_markdown(table, command, confusions=confusions)
        write_results(args.out, "generation", table, command, time.perf_counter() - start)
        write_text(Path(args.out) / "generation.md", report)
        if gallery:
            captions = [shapes.caption(s) for s in scenes(n, 1, "heldout", args.seed)]
            plot_gallery(gallery, captions, Path(args.out) / "generation.png")
        print(report)

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
