"""Attribute binding: the failure §7 of unCLIP reports, measured exactly in the Shapes world.

    python -m eval.attribute_binding                                 # the shipped checkpoints
    python -m eval.attribute_binding --checkpoint runs/shapes --n 200 --splits train heldout

unCLIP's decoder sees the caption through z_i, a single vector, and the paper finds it
"worse than GLIDE at binding attributes to objects" (Fig. 15: "a red cube on top of a blue
cube" gives cubes of mixed colours), and that reconstructions image → z_i → decoder swap
colours and sizes (Fig. 16). For seeded two-object captions of two colours ("a small red
square above a large blue circle") each method draws one image, and the oracle finds its
objects and matches them to the caption's by colour. Then, for each other attribute that
tells the caption's two objects apart and that the image shows both values of, the colours
are either on the right objects or **swapped**: colour↔shape (the red one is the square),
colour↔size (the red one is small) and colour↔place (the red one is above). Binding
accuracy per attribute = right / (right + swapped); 50% is chance. Methods:
- unCLIP (diffusion prior, AR prior) and the GLIDE baseline, from the caption;
- reconstruction: the caption's own render → CLIP z_i → decoder with no caption (Fig. 16);
- real renders: the oracle's own error on perfect images (should be none).
And whether z_i itself binds (`clip_report.binding_probe`: the left object's colour and shape
read linearly from z_i of side-by-side pairs, where a bag of attributes scores 50%).
Each image gets one outcome: `wrong count` (not two objects), `wrong colours` (not the
caption's two colours), `swapped` (some attribute bound to the wrong colour), `bound` (at
least one bound right, none swapped) or `unjudged` (the right colours, but nothing they
could be bound to is drawn: e.g. two circles side by side for "a circle above a square").
Writes results/attribute_binding.csv (one row per method and split),
attribute_binding_images.csv (one row per image), attribute_binding.json (command, wall
time, machine, the z_i probe) and attribute_binding.png (outcomes, and the swapped cases
beside their captions).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from eval.clip_report import binding_probe
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
    write_results,
)
from unclip_repro.cli import positive, run, writable
from unclip_repro.data import oracle, shapes
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnknownWordsWarning

COMMAND = "python -m eval.attribute_binding"
OUTCOMES = ("swapped", "wrong colours", "wrong count", "unjudged", "bound")  # gallery: worst first
ATTRIBUTES = ("shape", "size", "place")  # what a colour is bound to


def classify(image: torch.Tensor | np.ndarray, spec: shapes.SceneSpec) -> dict[str, str | None]:
    """The outcome of one image for a two-object, two-colour spec, and for each attribute
    "right", "swapped" or None (the caption's objects share it, or the image lacks a value)."""
    found = oracle.detect(image)
    result: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    a, b = spec.objects
    if len(found) != 2:
        return result | {"outcome": "wrong count"}
    by_colour = {d.colour: d for d in found}
    if set(by_colour) != {a.colour, b.colour} or a.colour == b.colour:
        return result | {"outcome": "wrong colours"}
    da, db = by_colour[a.colour], by_colour[b.colour]  # the objects drawn in a's, b's colour
    for key in ("shape", "size"):
        want, got = (getattr(a, key), getattr(b, key)), (getattr(da, key), getattr(db, key))
        if want[0] != want[1] and set(got) == set(want):
            result[key] = "right" if got == want else "swapped"
    if oracle.relation(da, db) == spec.relation:
        result["place"] = "right"
    elif oracle.relation(db, da) == spec.relation:
        result["place"] = "swapped"
    if "swapped" in result.values():
        return result | {"outcome": "swapped"}
    return result | {"outcome": "bound" if "right" in result.values() else "unjudged"}


BINDING_METHODS = ("diffusion", "ar", "glide", "reconstruction", "real")


@torch.no_grad()
def measure(
    model,  # noqa: ANN001
    n: int,
    splits: list[str],
    seed: int = 0,
    batch_size: int = 50,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[tuple[str, str], torch.Tensor]]:
    """One row per image (method, split, caption, outcome), and the images themselves."""
    names = available(model, list(BINDING_METHODS))
    rows, images = [], {}
    bar = tqdm(total=len(names) * len(splits) * n, desc="binding", disable=not progress)
    for split in splits:
        # two colours, so that binding colours means something
        scenes, _ = scene_set("binding", n, seed, 2, split, distinct_colours=True)
        captions = [shapes.caption(s) for s in scenes]
        for name in names:
            label = METHODS[name]
            images[label, split] = generate(
                method_fn(model, name), captions, scenes, seed, batch_size, bar
            )
            scored = oracle.score_batch(images[label, split], captions)["all"]
            for k, (scene, text) in enumerate(zip(scenes, captions, strict=True)):
                rows.append(
                    {"method": label, "split": split, "index": k, "caption": text}
                    | classify(images[label, split][k], shapes.scene_spec(scene))
                    | {"all_right": bool(scored[k])}
                )
    bar.close()
    return pd.DataFrame(rows), images


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per (method, split): the share of each outcome, the binding accuracy per attribute
    (with how many images it was measured on) and the oracle's every-attribute-right rate."""
    rows = []
    for (method, split), part in per_image.groupby(["method", "split"], sort=False):
        row = {"method": method, "split": split, "n": len(part)}
        row |= {o: (part.outcome == o).mean() for o in OUTCOMES}
        pooled = pd.Series(part[list(ATTRIBUTES)].to_numpy().ravel()).dropna()  # all judged
        row["binding"] = (pooled == "right").mean() if len(pooled) else np.nan
        row["binding n"] = len(pooled)
        for key in ATTRIBUTES:
            judged = part[key].dropna()
            row[f"colour-{key} binding"] = (judged == "right").mean() if len(judged) else np.nan
            row[f"colour-{key} n"] = len(judged)
        rows.append(row | {"all right": part.all_right.mean()})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, per_image: pd.DataFrame, images: dict, path: Path, k: int = 8):  # noqa: ANN201
    """Top: each method's outcomes as a stacked bar; below, one row per generating method of
    its worst images (by OUTCOMES' order) under their captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in dict.fromkeys(per_image.method) if m != METHODS["real"]]
    split = per_image.split.iloc[0]
    fig = plt.figure(figsize=(1.7 * k, 3.2 + 1.9 * len(names)))
    grid = fig.add_gridspec(1 + len(names), k, height_ratios=[2.2] + [1.5] * len(names))
    ax = fig.add_subplot(grid[0, :])
    rows = table[table.split == split].set_index("method")
    left = np.zeros(len(rows))
    palette = plt.get_cmap("tab10")
    for j, outcome in enumerate(OUTCOMES):
        colour = "0.75" if outcome == "bound" else palette(j)
        ax.barh(rows.index, rows[outcome], left=left, color=colour, label=outcome)
        left += rows[outcome].to_numpy()
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of images ({split} two-object captions, n = {int(rows.n.iloc[0])})")
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.tick_params(axis="y", labelsize=8)
    order = {o: i for i, o in enumerate(OUTCOMES)}
    for r, name in enumerate(names):
        part = per_image[(per_image.method == name) & (per_image.split == split)]
        worst = part.sort_values("outcome", key=lambda s: s.map(order), kind="stable").head(k)
        for c, row in enumerate(worst.itertuples()):
            cell = fig.add_subplot(grid[1 + r, c])
            cell.imshow(images[name, split][row.index].permute(1, 2, 0).numpy())
            cell.set_xticks([]), cell.set_yticks([])
            text = row.caption.removeprefix("a ").replace(" a ", "\n")
            what = [k for k in ATTRIBUTES if getattr(row, k) == "swapped"]
            verdict = f"swapped: {', '.join(what)}" if what else row.outcome
            cell.set_title(f"{text}\n→ {verdict}", fontsize=6)
            if c == 0:
                cell.set_ylabel(name.replace(" (", "\n("), fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = harness_parser(COMMAND, __doc__, 100, "two-object captions per split")
    p.add_argument("--splits", nargs="+", default=["train"], choices=["train", "heldout"])
    p.add_argument(
        "--probe-scenes", type=int, default=4000, help="two-object scenes the z_i probe fits on"
    )
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])

    def body() -> int:
        args = p.parse_args(argv)
        positive(args.num_captions, "--num-captions")
        positive(args.batch_size, "--batch-size")
        positive(args.probe_scenes, "--probe-scenes")
        start = time.perf_counter()
        model = load_model(args.checkpoint)
        require_methods(model, ["glide"], args.checkpoint)  # the comparison needs it
        warnings.simplefilter("ignore", UnknownWordsWarning)
        n = args.num_captions
        per_image, images = measure(model, n, args.splits, args.seed, args.batch_size)
        table = summarise(per_image)
        out = writable(args.out)
        write_text(out / "attribute_binding_images.csv", per_image.to_csv(index=False))
        plot(table, per_image, images, out / "attribute_binding.png")
        probe = binding_probe(
            model.clip,
            model.decoder.resolution,
            args.probe_scenes,
            args.probe_scenes // 4,
            args.seed,
        )
        wall = time.perf_counter() - start
        write_results(out, "attribute_binding", table, command, wall, z_i_probe=probe)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
        print(
            "z_i, side-by-side pairs, left object's colour / shape read linearly where the two "
            f"differ (a bag: 50%): {probe['left_colour']:.0%} / {probe['left_shape']:.0%}"
        )
        print(f"wrote {out}/attribute_binding.csv, .json and .png ({wall / 60:.1f} min)")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
