"""Which decoder recipe learns fastest on 2 CPU cores? Train one variant, then measure it.

    .venv/bin/python bench/decoder_recipe.py --steps 1000 --prediction v --out runs/recipe/v
    .venv/bin/python bench/decoder_recipe.py --steps 1000 --prediction eps --out runs/recipe/eps
    .venv/bin/python bench/decoder_recipe.py --init shipped --steps 1500 --cooldown 1500 \
        --methods true --splits train --num-captions 200 --out runs/recipe/cooldown
    .venv/bin/python bench/decoder_recipe.py --stage glide --seed 1 --steps 12500 \
        --methods glide --splits train --num-captions 200 --out runs/recipe/glide-seed1

Trains the `shapes` preset's decoder with the settings given (the rest from the preset) on the
shipped Shapes CLIP, continuing a run already in OUT (or, new, from the weights of `--init`:
`shipped` is the shipped decoder, `glide` the shipped GLIDE baseline), then writes
OUT/report.md: oracle accuracy (`eval.generation`) of images drawn with the shipped diffusion
prior, and with the true z_i of a render of each caption (`--methods`). `--stage glide` trains
the GLIDE baseline instead (the same U-Net on the caption alone; `--methods glide`), `--seed`
another draw of the same recipe (initial weights and the scenes of every batch).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from eval import generation
from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run
from unclip_repro.components import COMPONENTS, component_of, load_component
from unclip_repro.config import Preset, get_preset
from unclip_repro.errors import UserError
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnCLIP
from unclip_repro.train import train
from unclip_repro.unet import AttentionBlock


def grown(init: Path, preset: Preset, dest: Path) -> Path:
    """`init`'s weights in the decoder `preset` describes, which may add attention blocks (at
    new resolutions): those start as the identity (their output projection is zero), so the
    grown decoder draws what `init` drew. Written to `dest`; `init` itself if nothing grew,
    or if `init` is the GLIDE baseline, which `train` starts the decoder from itself
    (`Decoder.load_glide`)."""
    if component_of(init) == "glide":
        return init
    module = COMPONENTS["decoder"].build(preset)
    missing, unexpected = module.load_state_dict(checkpoint.load_weights(init), strict=False)
    if not missing and not unexpected:
        return init
    blocks = {name for name, m in module.named_modules() if isinstance(m, AttentionBlock)}
    new = {key.rsplit(".", 2)[0] for key in missing}
    if unexpected or not new <= blocks:
        raise UserError(f"{init} does not fit this decoder beyond new attention blocks")
    clip = checkpoint.load_config(init)["preset"]["clip"]  # the CLIP it was trained on
    config = {"component": "decoder", "preset": preset.to_dict() | {"clip": clip}}
    checkpoint.save(dest, module.state_dict(), config)
    return dest


def main() -> None:
    """Train a decoder variant and write its oracle report."""
    parser = Parser(prog="bench/decoder_recipe.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run folder of this variant")
    parser.add_argument("--stage", choices=["decoder", "glide"], default="decoder")
    parser.add_argument("--seed", type=int, help="initial weights and data (the preset: 0)")
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
    parser.add_argument("--cooldown", type=int, help="last steps: the rate falls to zero")
    parser.add_argument("--text-drop", type=float, help="caption dropout (the paper: 0.5)")
    parser.add_argument("--z-drop", type=float, help="z_i dropout (the paper: 0.1)")
    parser.add_argument(
        "--init", help="decoder checkpoint to start from ('shipped': ours; 'glide': our GLIDE)"
    )
    parser.add_argument("--clip", help="CLIP run folder (default: the shipped CLIP)")
    parser.add_argument("--num-captions", type=int, default=64, help="captions per set")
    parser.add_argument("--methods", default="diffusion,true", help="of eval.generation")
    parser.add_argument("--splits", default="heldout,train", help="caption sets")
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
    decoder = {
        "prediction": args.prediction,
        "timestep_sampling": args.timestep_sampling,
        "text_drop": args.text_drop,
        "z_drop": args.z_drop,
    }
    decoder = {"unet": unet} | {k: v for k, v in decoder.items() if v is not None}
    preset.decoder = dataclasses.replace(preset.decoder, **decoder)
    settings = {
        "lr": args.lr,
        "batch_size": args.batch_size,
        "schedule": args.schedule,
        "cooldown": args.cooldown,
        "seed": args.seed,
    }
    stage = args.stage
    preset.train[stage] = dataclasses.replace(
        preset.train[stage], **{k: v for k, v in settings.items() if v is not None}
    )
    shipped = checkpoint.shipped("shapes")
    clip_dir = Path(args.clip) if args.clip else shipped / "clip"
    out = Path(args.out)
    start = time.perf_counter()
    run = out / stage  # an earlier run of this variant is continued to --steps
    resume = checkpoint.exists(run)
    init = {"shipped": shipped / stage, "glide": shipped / "glide"}.get(args.init, args.init)
    init = None if resume else init
    if init is not None and stage == "decoder":
        init = grown(Path(init), preset, out / "init")
    result = train(preset, stage, run, args.steps, resume, clip=clip_dir, init=init)
    seconds = time.perf_counter() - start

    clip = load_component(clip_dir)
    prior = load_component(shipped / "prior-diffusion") if not args.clip else None
    trained = load_component(run)
    priors = {"diffusion": prior} if prior else {}
    glide = trained if stage == "glide" else None  # then the decoder slot only sizes the images
    model = UnCLIP(clip, trained, priors, [], glide=glide)
    split = lambda text: tuple(x for x in text.split(",") if x)  # noqa: E731
    methods, splits = split(args.methods), split(args.splits)
    table, _ = generation.measure(model, args.num_captions, splits=splits, methods=methods)
    given = {k.replace("_", "-"): v for k, v in vars(args).items() if v is not None}
    command = "bench/decoder_recipe.py " + " ".join(f"--{k} {v}" for k, v in given.items())
    report = generation.to_markdown(table, command)
    report += f"\ntraining: {result.step} steps in {seconds:.0f} s; {stage} {trained.cfg}\n"
    write_text(out / "report.md", report)
    print(report)


if __name__ == "__main__":
    raise SystemExit(run(main))
