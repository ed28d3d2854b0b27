"""Guidance scale against fidelity and diversity: Fig. 9, 11 and 13 of unCLIP in the Shapes world.

    python -m eval.guidance_sweep                                   # the shipped checkpoints
    python -m eval.guidance_sweep --checkpoint runs/shapes --num-captions 64 --num-samples 8

The paper's claim (§5.2): as the decoder's classifier-free guidance grows, GLIDE's samples
of one caption collapse towards one image, while unCLIP's keep their diversity, because
its prior has already drawn z_i and the decoder's guidance cannot undo that draw. For
unCLIP with each prior and for the GLIDE baseline, at each decoder guidance scale, we draw
`--num-samples` images of each of `--num-captions` captions (seeded Shapes scenes of the training
pairs, at the decoder's base resolution) and measure with the frozen Shapes feature network
(eval/features.py):
- FID against `--num-reference` real renders of the same captions (`shapes.realise`: each
  caption drawn again with new residual detail, and with `--unstated P` — captions that leave
  each attribute unstated with probability P, "a red shape" — whatever it leaves out drawn
  afresh too), i.e. against the distribution the samples
  should follow; at this sample size FID is biased upwards, so compare rows with each other
  and with the `real data` row, its floor, not with Table 2;
- precision and recall against those renders (prdc, k = 5): do samples look like renders of
  these captions / do they cover the renders' variety;
- diversity: mean pairwise feature distance between the samples of one caption;
- oracle: the share of the attributes the captions state that the images get right
  (`attributes`) and of images with every one right (`oracle`).
The `real data` row is another set of fresh renders of the captions: each measure's value
for perfect samples.
Every method and scale shares its noise (common random numbers), so the curves are smooth.
Each finished (method, scale) row is kept in `--work-dir` under a key of the settings and the
components' weights: a sweep stopped midway and run again resumes and gives the same table.
Writes results/guidance_sweep.csv, .json (command, wall time, machine) and .png.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from eval import features
from eval.metrics import (
    METHODS,
    Stats,
    cache_key,
    diversity,
    fid,
    generate,
    harness_parser,
    identities,
    load_model,
    method_fn,
    precision_recall,
    require_methods,
    save_figure,
    scene_set,
    write_results,
)
from unclip_repro.cli import UserError, run
from unclip_repro.data import oracle, shapes
from unclip_repro.files import write_json
from unclip_repro.pipeline import UnknownWordsWarning

COMMAND = "python -m eval.guidance_sweep"
SWEPT = ("diffusion", "ar", "glide")  # the methods whose decoder guidance is swept
REAL = "real data"


def _measure(
    images: torch.Tensor,
    captions: list[str],
    samples: int,
    extractor: features.Extractor,
    real: torch.Tensor,
    ref: Stats,
) -> dict[str, float]:
    """The measures of images (C·S, 3, R, R), caption-major (S samples of caption 0, …)."""
    fake = extractor(images)
    pr = precision_recall(real, fake)
    scored = oracle.score_batch(images, np.repeat(captions, samples))
    stated = scored.drop(columns="all").to_numpy(dtype=float, na_value=np.nan)
    return {
        "fid": fid(ref, Stats.of(fake)),
        "precision": pr["precision"],
        "recall": pr["recall"],
        "diversity": diversity(fake.reshape(len(captions), samples, -1)),
        "attributes": float(np.nanmean(stated)),
        "oracle": float(scored["all"].mean()),
    }


@torch.no_grad()
def sweep(
    model,  # noqa: ANN001
    scales: list[float],
    methods: list[str],
    n_captions: int,
    samples: int,
    n_reference: int,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    extractor: features.Extractor | None = None,
    unstated: float = 0.0,
    work: Path | None = None,
) -> pd.DataFrame:
    """One row per (method, scale), plus the real-data row (scale NaN); features from
    `extractor` (default: the shipped Shapes network). With `unstated` > 0 each caption leaves
    each attribute unstated with that probability, and the real renders draw what it leaves
    out afresh (`shapes.realise`). With `work`, a folder for these settings, each finished row
    is kept there and read back instead of drawn again."""
    extractor = extractor or features.shapes_features()
    R = model.decoder.resolution
    scenes, rng = scene_set("sweep", n_captions, seed)
    if unstated > 0:
        captions = [shapes.caption(s, rng, unstated) for s in scenes]
    else:
        captions = [shapes.caption(s) for s in scenes]
    specs = [shapes.parse_caption(c) for c in captions]
    real = extractor(
        shapes.render_batch(
            [shapes.realise(specs[k % n_captions], rng) for k in range(n_reference)], R
        )
    )
    ref = Stats.of(real)
    redrawn = shapes.render_batch(
        [shapes.realise(spec, rng) for spec in specs for _ in range(samples)], R
    )
    rows = [
        {"method": REAL, "scale": np.nan}
        | _measure(redrawn, captions, samples, extractor, real, ref)
    ]

    prompts = [c for c in captions for _ in range(samples)]  # caption-major
    bar = tqdm(total=len(methods) * len(scales) * len(prompts), desc="sweep", disable=not progress)
    for method in methods:
        for scale in scales:
            done = None if work is None else work / f"{method}-{scale:g}.json"
            if done is not None and done.is_file():  # finished by an earlier sitting
                rows.append(json.loads(done.read_text()))
                bar.update(len(prompts))
                continue
            start = time.perf_counter()
            fn = method_fn(model, method, decoder_guidance=scale)
            images = generate(fn, prompts, None, seed, batch_size, bar)
            seconds = time.perf_counter() - start
            row = {"method": METHODS[method], "scale": scale}
            rows.append(row | _measure(images, captions, samples, extractor, real, ref))
            rows[-1]["s_per_image"] = seconds / len(prompts)
            if done is not None:
                write_json(
                    done,
                    {k: float(v) if isinstance(v, np.floating) else v for k, v in rows[-1].items()},
                )
    bar.close()
    table = pd.DataFrame(rows)
    table.insert(2, "images", [len(prompts)] * len(table))
    return table


def plot(table: pd.DataFrame, path: Path) -> None:
    """Four panels against the guidance scale: FID, precision/recall, diversity, oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    panels = [
        ("fid", "FID (Shapes features) ↓"),
        ("precision", "precision (solid), recall (dashed)"),
        ("diversity", "diversity: pairwise distance\nbetween samples of a caption"),
        ("attributes", "oracle: stated attributes right (solid),\nimages all right (dashed)"),
    ]
    real = table[table.method == REAL].iloc[0]
    for ax, (col, title) in zip(axes, panels, strict=True):
        for k, (name, part) in enumerate(table[table.method != REAL].groupby("method", sort=False)):
            colour = f"C{k}"
            ax.plot(part.scale, part[col], "o-", color=colour, label=name)
            second = {"precision": "recall", "attributes": "oracle"}.get(col)
            if second:
                ax.plot(part.scale, part[second], "o--", color=colour)
        ax.axhline(real[col], color="gray", ls=":", label=f"{REAL} (same captions)")
        ax.set_xlabel("decoder guidance scale")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = harness_parser(COMMAND, __doc__, 24, "seeded captions", batch_size=64)
    p.add_argument("--methods", nargs="+", default=list(SWEPT), choices=SWEPT)
    p.add_argument("--scales", nargs="+", type=float, default=[1, 1.5, 2, 3, 4, 6])
    p.add_argument("--num-samples", type=int, default=4, help="images per caption (≥ 2)")
    p.add_argument("--num-reference", type=int, default=1000, help="real renders for FID")
    p.add_argument(
        "--work-dir", default="runs/guidance_sweep", help="finished rows, kept to resume"
    )
    p.add_argument(
        "--unstated",
        type=float,
        default=0.0,
        help="probability that a caption leaves each attribute unstated (§5.2: one caption, "
        "many images)",
    )
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])

    def body() -> int:
        args = p.parse_args(argv)
        if args.num_samples < 2 or args.num_captions < 1 or args.num_reference < 2:
            p.error("need --num-samples ≥ 2, --num-captions ≥ 1 and --num-reference ≥ 2")
        if not 0 <= args.unstated < 1:
            p.error("--unstated must be in [0, 1)")
        if any(s < 0 for s in args.scales):
            p.error("guidance scales must be ≥ 0 (1: no guidance)")
        start = time.perf_counter()
        model = load_model(args.checkpoint)
        require_methods(model, args.methods, args.checkpoint)
        try:
            extractor = features.shapes_features()
        except features.MissingWeights as e:
            raise UserError(str(e)) from None
        warnings.simplefilter("ignore", UnknownWordsWarning)  # Shapes captions: none unknown
        # finished rows are kept per settings and weights (not per method or scale: those name
        # the rows themselves)
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")}
        settings |= {"methods": None, "scales": None}
        key = cache_key(settings=settings, weights=identities(args.checkpoint))
        table = sweep(
            model,
            args.scales,
            args.methods,
            args.num_captions,
            args.num_samples,
            args.num_reference,
            args.seed,
            args.batch_size,
            extractor=extractor,
            unstated=args.unstated,
            work=Path(args.work_dir) / key,
        )
        plot(table, Path(args.out) / "guidance_sweep.png")
        wall = time.perf_counter() - start
        write_results(args.out, "guidance_sweep", table, command, wall)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        print(f"wrote {args.out}/guidance_sweep.csv, .json and .png ({wall / 60:.1f} min)")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
