"""`make demo`: measure a trained Shapes stack and write its report to results/demo/.

    python -m eval.demo                                   # the stack shipped in the package
    python -m eval.demo --checkpoint runs/shapes          # one trained by `make train`

Writes `clip_report.json` (with the linear probe of z_i) and `clip_retrieval.png` (what the
CLIP reads), `priors.md` (how well each prior predicts held-out images' embeddings),
`generation.md` / `.csv` / `.png`
(oracle accuracy, unCLIP against the GLIDE baseline), `samples.png` and `samples_train.png`
(held-out and training-pair captions through the whole stack at full resolution), and the
manipulations of §3 on two renders (`inputs.png`): `variations.png`, `interpolation.png`,
`textdiff.png`, `pca.png` (decoded from the leading k principal components, Fig. 7), each
labelled (the input beside its outputs, η/θ/k over the columns, over each output what the
oracle reads in it); `timing.json`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from eval import clip_report, generation, priors
from eval.metrics import load_model, save_figure
from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run, writable
from unclip_repro.data import oracle, shapes
from unclip_repro.figures import image_grid
from unclip_repro.files import write_json, write_text
from unclip_repro.pipeline import (
    MANIPULATION_GUIDANCE,
    TEXT_DIFF_AMOUNT,
    TEXT_DIFF_METHOD,
    TEXT_DIFFS,
    VARIATION_ETA,
    UnCLIP,
)

COMMAND = "python -m eval.demo"


def clip_and_priors(folder: Path, out: Path, n: int, command: str) -> None:
    """CLIP's report and figure, and the priors' table at the paper's settings."""
    clip, resolution, found, _ = priors.load_priors(folder, variants=False)
    report = clip_report.shapes_report(clip, resolution, n=n)
    report["linear_probe"] = clip_report.linear_probe(clip, resolution)
    write_json(out / "clip_report.json", report)
    clip_report.plot_report(clip, resolution, out / "clip_retrieval.png")
    print(
        f"CLIP, held-out text->image retrieval top-1: {report['retrieval_top1']:.1%} "
        f"(exact image), {report['retrieval_top1_match']:.1%} (an image matching the caption)"
    )
    probe = report["linear_probe"]
    print(
        "CLIP, linear probe of z_i: "
        + ", ".join(f"{k} {probe[k]:.1%}" for k in ("colour", "shape", "size", "position"))
        + f", shape on held-out pairs {probe['heldout_shape']:.1%}"
    )
    table = priors.measure(clip, found, min(n, 200), resolution)
    write_text(out / "priors.md", priors.to_markdown(table, command))
    for row in table.itertuples():
        print(f"{row.prior}: cos(ẑ_i, z_i) {row.cos_true:.3f}, retrieval {row.retrieval_match:.1%}")


def oracle_and_figures(model: UnCLIP, out: Path, n: int, command: str) -> None:
    """Oracle accuracy (unCLIP vs GLIDE) on held-out and training-pair captions, and the
    figures: captions of both through the whole stack, variations, an interpolation, a text
    diff and PCA truncations (Fig. 7)."""
    table, gallery = generation.measure(model, n)
    write_text(out / "generation.csv", table.to_csv(index=False, float_format="%.4f"))
    write_text(out / "generation.md", generation.to_markdown(table, command))
    scenes = generation.scenes(n, 1, "heldout")
    captions = [shapes.caption(s) for s in scenes]
    generation.plot_gallery(gallery, captions, out / "generation.png")
    for row in table[table.objects == 1].itertuples():
        print(f"{row.method}: {row.split} single-object captions all right {row.all:.0%}")

    seen = [shapes.caption(s) for s in generation.scenes(8, 1, "train")]
    for names, path in ((captions[:8], "samples.png"), (seen, "samples_train.png")):
        grid = image_grid(model.generate(names, seed=0), nrow=8, titles=names)
        _save(grid, out / path)
    R = model.decoder.resolution
    a, b = (shapes.to_tensor(shapes.render(s, R)) for s in scenes[:2])
    _save(
        image_grid([a, b], nrow=2, titles=captions[:2], suptitle="the inputs"), out / "inputs.png"
    )
    variations = model.variations(a, n=6)
    _save(
        image_grid(
            [a, *variations],
            nrow=7,
            titles=[captions[0], *_readings(variations)],
            col_labels=["input"] + [f"variation {i + 1}" for i in range(6)],
            suptitle="variations (§3.1): the input's z_i and inverted x_T, DDIM with "
            f"η = {VARIATION_ETA:g}, guidance {MANIPULATION_GUIDANCE:g}",
        ),
        out / "variations.png",
    )
    theta = [f"θ = {t:.1f}" for t in torch.linspace(0, 1, 6).tolist()]
    frames = model.interpolate(a, b, n=6)
    _save(
        image_grid(
            [a, *frames, b],
            nrow=8,
            titles=[captions[0], *_readings(frames), captions[1]],
            col_labels=["input a", *theta, "input b"],
            suptitle="interpolation (§3.2): slerp of z_i and of x_T from a to b, η = 0, "
            f"guidance {MANIPULATION_GUIDANCE:g}",
        ),
        out / "interpolation.png",
    )
    text_diff_figure(model, a, captions[0], out)
    if "ar" in model.priors:  # its PCA
        ks = [1, 2, 4, 8, 16, model.clip.embed_dim]
        decoded = model.pca_truncations(torch.stack([a, b]), ks).unflatten(0, (2, len(ks)))
        tiles, titles = [], []
        for x, caption, row in zip((a, b), captions[:2], decoded, strict=True):
            tiles += [x, *row]
            titles += [caption, *_readings(row)]
        _save(
            image_grid(
                tiles,
                nrow=len(ks) + 1,
                titles=titles,
                col_labels=["input"] + [f"k = {k}" for k in ks],
                suptitle="PCA truncation (Fig. 7): z_i kept to its leading k principal "
                "components, decoded with the same noise, η = 0",
            ),
            out / "pca.png",
        )


def text_diff_figure(model: UnCLIP, image: torch.Tensor, caption: str, out: Path) -> None:
    """One attribute of `image` edited by each text diff (`pipeline.TEXT_DIFFS`), a row each,
    its amount over each frame and what the oracle reads under it."""
    (obj,) = shapes.parse_caption(caption).objects
    colour = next(c for c in shapes.COLOURS if c != obj.colour)
    edited = caption.replace(obj.colour, colour, 1)
    names = {"text": "paper's slerp", "prior": "prior shift", "caption": "shift + captions"}
    tiles, titles, rows = [], [], []
    for method in TEXT_DIFFS:
        top = TEXT_DIFF_AMOUNT[method]
        frames = model.text_diff(image, caption, edited, n=6, method=method)
        tiles += [image, *frames]
        symbol = "θ" if method == "text" else "λ"
        amounts = [f"{symbol} = {t:.2g}" for t in torch.linspace(0, top, 6).tolist()]
        readings = _readings(frames, prefix="")
        titles += [caption, *(f"{a}: {r}" for a, r in zip(amounts, readings, strict=True))]
        rows.append(names[method] + (" (default)" if method == TEXT_DIFF_METHOD else ""))
    _save(
        image_grid(
            tiles,
            nrow=7,
            titles=titles,
            row_labels=rows,
            suptitle=f"text diff (§3.3): '{caption}' → '{edited}', η = 0, guidance "
            f"{MANIPULATION_GUIDANCE:g}\ntitles: the amount, then what the oracle reads "
            "(results/manipulations.md measures each method)",
        ),
        out / "textdiff.png",
    )


def _readings(
    images: torch.Tensor | list[torch.Tensor], prefix: str = "oracle reads: "
) -> list[str]:
    """Each output's title: what the oracle sees in it, in caption words."""
    return [
        prefix
        + (" + ".join(f"{d.size} {d.colour} {d.shape}" for d in oracle.detect(x)) or "nothing")
        for x in images
    ]


def _save(fig: Figure, path: Path) -> None:
    save_figure(fig, path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = Parser(prog=COMMAND, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
    p.add_argument("--out", default="results/demo", help="report folder")
    p.add_argument("--num-eval", type=int, default=500, help="held-out scenes for CLIP, priors")
    p.add_argument("--num-captions", type=int, default=24, help="captions per oracle set")

    def body() -> None:
        args = p.parse_args(argv)
        out, start = writable(args.out), time.perf_counter()
        model = load_model(args.checkpoint)
        folder = checkpoint.components_folder(args.checkpoint)
        command = f"{COMMAND} --checkpoint {args.checkpoint}"
        clip_and_priors(folder, out, args.num_eval, command)
        oracle_and_figures(model, out, args.num_captions, command)
        minutes = (time.perf_counter() - start) / 60
        write_json(
            out / "timing.json",
            {"reports_min": round(minutes, 2), "threads": torch.get_num_threads()},
        )
        print(f"reports {minutes:.1f} min; in {out}")

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
