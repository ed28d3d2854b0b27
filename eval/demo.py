"""`make demo`: measure a trained Shapes stack and write its report to results/demo/.

    python -m eval.demo                                   # the stack shipped in the package
    python -m eval.demo --checkpoint runs/shapes          # one trained by `make train`

Writes `clip_report.json` (with the linear probe of z_i) and `clip_retrieval.png` (what the
CLIP reads), `priors.md` (how well each prior predicts held-out images' embeddings),
`generation.md` / `.csv` / `.png`
(oracle accuracy, unCLIP against the GLIDE baseline), `samples.png` and `samples_train.png`
(held-out and training-pair captions through the whole stack at full resolution), and the
manipulations of §3 on two renders (`inputs.png`): `variations.png`, `interpolation.png`,
`textdiff.png`, `pca.png` (decoded from the leading k principal components, Fig. 7);
`timing.json`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from eval import clip_report, generation, priors
from eval.metrics import load_model
from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run, save_grid, writable
from unclip_repro.data import shapes
from unclip_repro.files import write_json, write_text
from unclip_repro.pipeline import UnCLIP

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
    save_grid(model.generate(captions[:8], seed=0), out / "samples.png", nrow=8)
    save_grid(model.generate(seen, seed=0), out / "samples_train.png", nrow=8)
    R = model.decoder.resolution
    a, b = (shapes.to_tensor(shapes.render(s, R)) for s in scenes[:2])
    save_grid([a, b], out / "inputs.png", nrow=2)
    save_grid(model.variations(a, n=6), out / "variations.png", nrow=6)
    save_grid(model.interpolate(a, b, n=6), out / "interpolation.png", nrow=6)
    save_grid(model.text_diff(a, captions[0], captions[1], n=6), out / "textdiff.png", nrow=6)
    if "ar" in model.priors:  # its PCA
        ks = [1, 2, 4, 8, 16, model.clip.embed_dim]
        save_grid(model.pca_truncations(torch.stack([a, b]), ks), out / "pca.png", nrow=len(ks))


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
