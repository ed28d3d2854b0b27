"""Does a CLIP's z_i hold every attribute linearly? Train a CLIP variant (or take one), probe it.

    .venv/bin/python bench/clip_probe.py                                   # the shipped CLIP
    .venv/bin/python bench/clip_probe.py --checkpoint runs/shapes/clip     # a trained one
    .venv/bin/python bench/clip_probe.py --train runs/probe/conv --steps 1700
    .venv/bin/python bench/clip_probe.py --train runs/probe/vit --vision vit --clip-unstated 0

`--train OUT` trains the `shapes` preset's CLIP recipe into OUT (resuming a run there), with
the settings given changed; then prints and writes OUT/probe.md: the linear probe of z_i
(`eval.clip_report.linear_probe`, the issue's acceptance check) and the zero-shot report
(`eval.clip_report.shapes_report`, held-out pairs).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from eval.clip_report import linear_probe, shapes_report
from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run
from unclip_repro.components import load_component
from unclip_repro.config import get_preset
from unclip_repro.files import write_text
from unclip_repro.train import train


def main() -> None:
    """Train (optionally) and probe one CLIP."""
    p = Parser(prog="bench/clip_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(checkpoint.shipped("shapes") / "clip"))
    p.add_argument("--train", help="run folder: train the shapes CLIP recipe there first")
    p.add_argument("--steps", type=int)
    p.add_argument("--vision", choices=["vit", "conv"])
    p.add_argument("--conv-norm", type=int, choices=[0, 1], help="GroupNorm in ConvTower")
    p.add_argument("--clip-unstated", type=float, help="captions' unstated probability")
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float, help="AdamW's, on matrices (the preset: 0)")
    p.add_argument("--seed", type=int, help="initialisation and data (the preset: 0)")
    p.add_argument("--out", help="folder for probe.md (default: the CLIP's folder)")
    args = p.parse_args()
    seconds = None
    folder = Path(args.checkpoint)
    if args.train:
        preset = get_preset("shapes")
        if args.vision:
            preset.clip = dataclasses.replace(preset.clip, vision=args.vision)
        if args.conv_norm is not None:
            preset.clip = dataclasses.replace(preset.clip, conv_norm=bool(args.conv_norm))
        if args.clip_unstated is not None:
            preset.data = dataclasses.replace(preset.data, clip_unstated=args.clip_unstated)
        given = {
            "lr": args.lr,
            "schedule": args.schedule,
            "batch_size": args.batch_size,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
        }
        preset.train["clip"] = dataclasses.replace(
            preset.train["clip"], **{k: v for k, v in given.items() if v is not None}
        )
        folder = Path(args.train)
        start = time.perf_counter()
        train(preset, "clip", folder, args.steps, resume=checkpoint.exists(folder))
        seconds = time.perf_counter() - start
    clip = load_component(folder)
    probe = linear_probe(clip, clip.image_size)
    zero_shot = shapes_report(clip, clip.image_size)
    lines = [
        f"# Linear probe of z_i: `{folder}`",
        "",
        f"`{' '.join(['bench/clip_probe.py', *sys.argv[1:]])}`",
        "",
        "| colour | shape | size | position | held-out shape |",
        "|---|---|---|---|---|",
        "| "
        + " | ".join(
            f"{100 * probe[k]:.1f}%"
            for k in ("colour", "shape", "size", "position", "heldout_shape")
        )
        + " |",
        "",
        f"Probe: logistic regression on {probe['n_fit']} single-object training-pair scenes, "
        f"scored on {probe['n_test']} fresh ones (and on {probe['n_test']} of held-out pairs).",
        "",
        "Zero-shot on held-out pairs (`eval.clip_report.shapes_report`): "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in zero_shot.items() if isinstance(v, float)),
    ]
    if seconds is not None:
        lines.append(f"\nTraining this sitting: {seconds:.0f} s.")
    report = "\n".join(lines) + "\n"
    write_text(Path(args.out or folder) / "probe.md", report)
    print(report)


if __name__ == "__main__":
    run(main)
