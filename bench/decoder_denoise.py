"""At which noise level does the decoder decide the shape? One-step x̂_0 from noised renders.

    .venv/bin/python bench/decoder_denoise.py                          # the shipped decoder
    .venv/bin/python bench/decoder_denoise.py --decoder runs/shapes/decoder --num-captions 128

Renders seeded single-object scenes of the training pairs, noises each to x_t at several
timesteps t, and asks the decoder (given the caption and the true z_i of the render, as in
training) for x̂_0 in one step. The oracle then scores x̂_0 against the caption, and the MSE
to the render is reported: where a decoder that samples well must already commit to the right
shape. Writes OUT/decoder_denoise.md and a figure (one row per t) beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from eval.metrics import scene_set
from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run, save_grid
from unclip_repro.components import load_component
from unclip_repro.data import oracle, shapes
from unclip_repro.files import write_text

TIMESTEPS = (20, 100, 300, 500, 700, 900)


@torch.no_grad()
def main() -> None:
    """Print and write the oracle accuracy and MSE of one-step x̂_0 per timestep."""
    p = Parser(prog="bench/decoder_denoise.py", description=__doc__.splitlines()[0])
    p.add_argument("--decoder", default=str(checkpoint.shipped("shapes") / "decoder"))
    p.add_argument("--clip", default=str(checkpoint.shipped("shapes") / "clip"))
    p.add_argument("--num-captions", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench")
    args = p.parse_args()
    clip, decoder = load_component(args.clip), load_component(args.decoder)
    scenes, _ = scene_set("generation", args.num_captions, args.seed, 1, "train")
    captions = [shapes.caption(s) for s in scenes]
    x0 = shapes.render_batch(scenes, decoder.resolution) * 2 - 1  # (N, 3, R, R) in [-1, 1]
    text, z_i = clip.encode_text(captions), clip.encode_image((x0 + 1) / 2)
    generator = torch.Generator().manual_seed(args.seed)
    rows, figure = [], [(x0[:8] + 1) / 2]
    for t in TIMESTEPS:
        tt = torch.full((len(x0),), t)
        x_t = decoder.diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=generator))
        out = decoder.denoise(x_t, tt, text.tokens, text.mask, z_i)
        x0_hat = decoder.diffusion.predict_x0(x_t, tt, out).clamp(-1, 1)
        scored = oracle.score_batch((x0_hat + 1) / 2, captions).astype(float).mean()
        mse = float((x0_hat - x0).pow(2).mean())
        rows.append(f"| {t} | {mse:.4f} | {scored['shape']:.0%} | {scored['all']:.0%} |")
        figure.append((x0_hat[:8] + 1) / 2)
    command = " ".join(["bench/decoder_denoise.py", *sys.argv[1:]])
    report = "\n".join(
        [
            f"# One-step x̂_0 of the decoder `{args.decoder}`",
            "",
            f"`{command}`; {args.num_captions} single-object training-pair captions, true z_i.",
            "",
            "| t | MSE to the render | shape | all |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    out = Path(args.out)
    write_text(out / "decoder_denoise.md", report)
    save_grid(torch.cat(figure), out / "decoder_denoise.png", nrow=8)
    print(report)


if __name__ == "__main__":
    sys.exit(run(main))
