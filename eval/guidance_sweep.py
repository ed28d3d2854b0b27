"""Guidance scale against fidelity and diversity: Fig. 9, 11 and 13 of unCLIP in the Shapes world.

    python -m eval.guidance_sweep                                   # the shipped checkpoints
    python -m eval.guidance_sweep --checkpoint runs/shapes --captions 64 --samples 8

The paper's claim (§5.2): as the decoder's classifier-free guidance grows, GLIDE's samples
of one caption collapse towards one image, while unCLIP's keep their diversity, because
its prior has already drawn z_i and the decoder's guidance cannot undo that draw. For
unCLIP with each prior and for the GLIDE baseline, at each decoder guidance scale, we draw
`--samples` images of each of `--captions` captions (seeded Shapes scenes of the training
pairs, at the decoder's base resolution) and measure with the frozen Shapes feature network
(eval/features.py):
- FID against `--num-reference` real renders of the same captions (`shapes.redraw`: each
  caption drawn again with new residual detail), i.e. against the distribution the samples
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
Writes results/guidance_sweep.csv, .json (command, wall time, machine) and .png.
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

from eval import features
from eval.metrics import (
    EvalError,
    Parser,
    Stats,
    diversity,
    fid,
    load_model,
    precision_recall,
    require_methods,
    run,
    write_results,
)
from unclip_repro.data import oracle, shapes
from unclip_repro.pipeline import UnknownWordsWarning

COMMAND = "python -m eval.guidance_sweep"
METHODS = {"diffusion": "unCLIP, diffusion prior", "ar": "unCLIP, AR prior", "glide": "GLIDE"}
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
) -> pd.DataFrame:
    """One row per (method, scale), plus the real-data row (scale NaN); features from
    `extractor` (default: the shipped Shapes network)."""
    extractor = extractor or features.shapes_features()
    R = model.decoder.resolution
    rng = np.random.default_rng([seed, 51])
    scenes = [shapes.random_scene(rng, split="train") for _ in range(n_captions)]
    captions = [shapes.caption(s) for s in scenes]
    real = extractor(
        shapes.render_batch(
            [shapes.redraw(scenes[k % n_captions], rng) for k in range(n_reference)], R
        )
    )
    ref = Stats.of(real)
    redrawn = shapes.render_batch(
        [shapes.redraw(s, rng) for s in scenes for _ in range(samples)], R
    )
    rows = [
        {"method": REAL, "scale": np.nan}
        | _measure(redrawn, captions, samples, extractor, real, ref)
    ]

    prompts = [c for c in captions for _ in range(samples)]  # caption-major
    bar = tqdm(total=len(methods) * len(scales) * len(prompts), desc="sweep", disable=not progress)
    for method in methods:
        for scale in scales:
            start, images = time.perf_counter(), []
            for i in range(0, len(prompts), batch_size):
                chunk, batch_seed = prompts[i : i + batch_size], seed * 1_000_003 + i
                if method == "glide":
                    out = model.generate_glide(chunk, batch_seed, guidance=scale, upsample=False)
                else:
                    out = model.generate(
                        chunk, batch_seed, prior=method, decoder_guidance=scale, upsample=False
                    )
                images.append(out)
                bar.update(len(chunk))
            seconds = time.perf_counter() - start
            images = torch.cat(images)
            row = {"method": METHODS[method], "scale": scale}
            rows.append(row | _measure(images, captions, samples, extractor, real, ref))
            rows[-1]["s_per_image"] = seconds / len(prompts)
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = Parser(prog=COMMAND, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--scales", nargs="+", type=float, default=[1, 1.5, 2, 3, 4, 6])
    p.add_argument("--captions", type=int, default=24, help="seeded captions")
    p.add_argument("--samples", type=int, default=4, help="images per caption (≥ 2)")
    p.add_argument("--num-reference", type=int, default=1000, help="real renders for FID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="results", help="folder for guidance_sweep.*")
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])

    def body() -> int:
        args = p.parse_args(argv)
        if args.samples < 2 or args.captions < 1 or args.num_reference < 2:
            p.error("need --samples ≥ 2, --captions ≥ 1 and --num-reference ≥ 2")
        if any(s < 0 for s in args.scales):
            p.error("guidance scales must be ≥ 0 (1: no guidance)")
        start = time.perf_counter()
        model = load_model(args.checkpoint)
        require_methods(model, args.methods, args.checkpoint)
        try:
            extractor = features.shapes_features()
        except features.MissingWeights as e:
            raise EvalError(str(e)) from None
        warnings.simplefilter("ignore", UnknownWordsWarning)  # Shapes captions: none unknown
        table = sweep(
            model,
            args.scales,
            args.methods,
            args.captions,
            args.samples,
            args.num_reference,
            args.seed,
            args.batch_size,
            extractor=extractor,
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
