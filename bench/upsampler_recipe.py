"""How long must a Shapes upsampler train to draw clean edges? Train one, measure it as it goes.

    .venv/bin/python bench/upsampler_recipe.py --stage upsampler1 --steps 200,1000,2000 \
        --out runs/upsampler-recipe/u1
    .venv/bin/python bench/upsampler_recipe.py --stage upsampler2 --lr 2e-3 --steps 500,1500 \
        --out runs/upsampler-recipe/u2-lr2e-3

Trains the `shapes` preset's upsampler (settings given override the preset's) and, at each step
count in `--steps`, upsamples `--num-images` fresh renders, box-downsampled to the stage's input
resolution, with the stage's sampler. It prints PSNR against the true high-resolution render
(higher is better; the flat-coloured shapes make any rim or fringe cost decibels) beside
bicubic interpolation's, and writes OUT/report.md and OUT/grid-<steps>.png (rows: input,
bicubic, the upsampler, the truth).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchvision.utils import save_image

from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run
from unclip_repro.components import load_component
from unclip_repro.config import get_preset
from unclip_repro.data.shapes import sample_batch
from unclip_repro.files import write_text
from unclip_repro.train import train


def psnr(images: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over images of each one's PSNR in dB (images in [0, 1])."""
    return float(
        peak_signal_noise_ratio(
            images, truth, data_range=1.0, reduction="none", dim=(1, 2, 3)
        ).mean()
    )


def main() -> None:
    """Train an upsampler variant to each step count and print its PSNR there."""
    parser = Parser(prog="bench/upsampler_recipe.py", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["upsampler1", "upsampler2"], required=True)
    parser.add_argument("--out", required=True, help="run folder of this variant")
    parser.add_argument("--steps", default="200,1000", help="step counts to measure at")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--channels", type=int)
    parser.add_argument("--prediction", choices=["eps", "v", "x0"])
    parser.add_argument("--residual", type=int, choices=[0, 1])
    parser.add_argument("--corrupt-p", type=float, help="probability an input is corrupted")
    parser.add_argument("--num-images", type=int, default=64)
    args = parser.parse_args()

    preset = get_preset("shapes")
    cfg = getattr(preset, args.stage)
    unet = dataclasses.replace(cfg.unet, channels=args.channels or cfg.unet.channels)
    residual = None if args.residual is None else bool(args.residual)
    changes = {"prediction": args.prediction, "residual": residual, "corrupt_p": args.corrupt_p}
    changes = {"unet": unet} | {k: v for k, v in changes.items() if v is not None}
    setattr(preset, args.stage, dataclasses.replace(cfg, **changes))
    settings = {"lr": args.lr, "batch_size": args.batch_size}
    settings = {k: v for k, v in settings.items() if v is not None}
    preset.train[args.stage] = dataclasses.replace(preset.train[args.stage], **settings)

    cfg = getattr(preset, args.stage)
    truth, _ = sample_batch(np.random.default_rng(12345), args.num_images, cfg.high)
    low = F.interpolate(truth, size=(cfg.low, cfg.low), mode="area")
    bicubic = F.interpolate(low, size=(cfg.high, cfg.high), mode="bicubic").clamp(0, 1)
    out, run_dir = Path(args.out), Path(args.out) / args.stage
    rows = [f"bicubic: {psnr(bicubic, truth):.2f} dB"]
    print(rows[0])
    for steps in sorted(int(s) for s in args.steps.split(",")):
        start = time.perf_counter()
        # the preset's constant learning rate after warm-up: each run starts the next
        train(preset, args.stage, run_dir, steps, resume=checkpoint.exists(run_dir))
        seconds = time.perf_counter() - start
        model = load_component(run_dir)
        images = model.sample(low, generator=torch.Generator().manual_seed(0))
        rows.append(f"{steps} steps: {psnr(images, truth):.2f} dB ({seconds:.0f} s training)")
        print(rows[-1], flush=True)
        nearest = F.interpolate(low, size=(cfg.high, cfg.high), mode="nearest")
        grid = torch.cat([x[:8] for x in (nearest, bicubic, images, truth)])
        save_image(grid, out / f"grid-{steps}.png", nrow=8, padding=1)
    given = {k.replace("_", "-"): v for k, v in vars(args).items() if v is not None}
    command = "bench/upsampler_recipe.py " + " ".join(f"--{k} {v}" for k, v in given.items())
    report = f"`{command}`\n\nPSNR against the truth, {args.num_images} fresh renders:\n\n"
    write_text(out / "report.md", report + "\n".join(f"- {r}" for r in rows) + "\n")


if __name__ == "__main__":
    raise SystemExit(run(main))
