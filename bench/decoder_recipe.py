"""Which decoder recipe learns fastest on 2 CPU cores? Train one variant, then measure it.

    .venv/bin/python bench/decoder_recipe.py --steps 1000 --prediction v --out runs/recipe/v
    .venv/bin/python bench/decoder_recipe.py --steps 1000 --prediction eps --out runs/recipe/eps

Trains the `shapes` preset's decoder with the settings given (the rest from the preset) on the
shipped Shapes CLIP, continuing a run already in OUT, then writes OUT/report.md: oracle
accuracy (`eval.generation`) of images drawn with the shipped diffusion prior, and with the
true z_i of a render of each caption.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from eval import generation
from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run
from unclip_repro.components import load_component
from unclip_repro.config import get_preset
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnCLIP
from unclip_repro.train import train


def main() -> None:
    """Train a decoder variant and write its oracle report."""
    parser = Parser(prog="bench/decoder_recipe.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run folder of this variant")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--prediction", choices=["eps", "v", "x0"])
    parser.add_argument("--channels", type=int)
    parser.add_argument("--mult", help="channel multipliers, e.g. 1,2,4")
    parser.add_argument("--attention", help="attention resolutions, e.g. 16,8")
    parser.add_argument("--coords", type=int, choices=[0, 1])
    parser.add_argument("--timestep-sampling", choices=["uniform", "logit-normal", "mixed"])
    parser.add_argument("--schedule", choices=["constant", "cosine"], help="learning rate")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--clip", help="CLIP run folder (default: the shipped CLIP)")
    parser.add_argument("--num-captions", type=int, default=64, help="captions per set")
    args = parser.parse_args()

    ints = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
    preset = get_preset("shapes")
    unet = {
        "channels": args.channels,
        "channel_mult": args.mult and ints(args.mult),
        "attention_resolutions": None if args.attention is None else ints(args.attention),
        "coords": None if args.coords is None else bool(args.coords),
    }
    unet = dataclasses.replace(
        preset.decoder.unet, **{k: v for k, v in unet.items() if v is not None}
    )
    decoder = {"prediction": args.prediction, "timestep_sampling": args.timestep_sampling}
    decoder = {"unet": unet} | {k: v for k, v in decoder.items() if v is not None}
    preset.decoder = dataclasses.replace(preset.decoder, **decoder)
    settings = {"lr": args.lr, "batch_size": args.batch_size, "schedule": args.schedule}
    preset.train["decoder"] = dataclasses.replace(
        preset.train["decoder"], **{k: v for k, v in settings.items() if v is not None}
    )
    shipped = checkpoint.shipped("shapes")
    clip_dir = Path(args.clip) if args.clip else shipped / "clip"
    out = Path(args.out)
    start = time.perf_counter()
    run = out / "decoder"  # an earlier run of this variant is continued to --steps
    result = train(preset, "decoder", run, args.steps, resume=checkpoint.exists(run), clip=clip_dir)
    seconds = time.perf_counter() - start

    clip = load_component(clip_dir)
    prior = load_component(shipped / "prior-diffusion") if not args.clip else None
    decoder = load_component(out / "decoder")
    model = UnCLIP(clip, decoder, {"diffusion": prior} if prior else {}, [])
    table, _ = generation.measure(model, args.num_captions)
    given = {k.replace("_", "-"): v for k, v in vars(args).items() if v is not None}
    command = "bench/decoder_recipe.py " + " ".join(f"--{k} {v}" for k, v in given.items())
    report = generation.to_markdown(table, command)
    report += f"\ntraining: {result.step} steps in {seconds:.0f} s; decoder {decoder.cfg}\n"
    write_text(out / "report.md", report)
    print(report)


if __name__ == "__main__":
    raise SystemExit(run(main))
