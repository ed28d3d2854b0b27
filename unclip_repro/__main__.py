"""The command line: `python -m unclip_repro train | posthoc-ema | export | sample | ...`.

Thin: it parses and calls the package. Bad input ends in one line (`cli.run`); the demo and
the reports live with the harness (`python -m eval.demo`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .checkpoint import exists
from .cli import Parser, UserError, minutes, positive, run, save_grid, writable
from .components import STAGES, export_component
from .config import PRESETS, get_preset, override, parse_assignment, read_overrides
from .pipeline import (
    MANIPULATION_GUIDANCE,
    TEXT_DIFF_METHOD,
    TEXT_DIFFS,
    VARIATION_ETA,
)
from .recipes import Source
from .train import check_trainable, import_clip, train, train_all

DATA_FLAGS = ("annotations", "images", "pairs", "root", "shards")


def cmd_train(args: argparse.Namespace) -> None:
    """Train one stage of a preset (the `clip` stage of a real-data preset: import one)."""
    positive(args.steps, "--steps")
    preset = get_preset(args.preset)
    check_trainable(preset, args.stage)  # before --set: train.FIELD names this stage's field
    changes = read_overrides(args.overrides) if args.overrides else {}
    changes |= dict(parse_assignment(a) for a in args.set)
    if args.steps is not None:
        changes["train.steps"] = args.steps
    preset = override(preset, changes, stage=args.stage)
    if (args.clip_model or args.clip_checkpoint) and args.stage != "clip":
        raise UserError("--clip-model and --clip-checkpoint go with --stage clip")
    if args.stage == "clip" and (args.clip_model or preset.data.dataset != "shapes"):
        if args.resume:
            raise UserError("an imported CLIP is frozen: there is nothing to resume")
        result = import_clip(preset, writable(args.out), args.clip_model, args.clip_checkpoint)
        print(f"imported CLIP {args.clip_model or preset.clip.pretrained}: {result.checkpoint}")
        return
    out = writable(args.out)
    pairs = {k: getattr(args, k) for k in DATA_FLAGS if getattr(args, k) is not None}
    if args.workers < 0:
        raise UserError(f"--workers must be at least 0, got {args.workers}")
    if pairs and args.max_bad is not None:
        pairs["max_bad"] = args.max_bad
    source = Source(pairs, args.workers) if pairs else None
    result = train(
        preset, args.stage, out, resume=args.resume, init=args.init, clip=args.clip, source=source
    )
    print(
        f"trained {args.stage} of {preset.name} to step {result.step} "
        f"(loss {result.loss:.4f}, {result.seconds:.0f} s); checkpoint: {result.checkpoint}"
    )


def cmd_train_all(args: argparse.Namespace) -> None:
    """Train every component of a Shapes preset, resuming what an earlier sitting left."""
    preset = get_preset(args.preset)
    if preset.data.dataset != "shapes":
        raise UserError(f"train-all trains a Shapes preset, not {preset.name!r}")
    runs = writable(Path(args.runs))
    budget = None if args.budget is None else minutes(args.budget)
    stages = None
    if args.stages:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise UserError(f"unknown stage(s) {', '.join(unknown)}: {', '.join(STAGES)}")
    seconds = train_all(preset.name, runs, budget, stages=stages)
    print(f"trained {len(seconds)} components in {sum(seconds.values()) / 60:.1f} min: {runs}")


def cmd_posthoc_ema(args: argparse.Namespace) -> None:
    """Build the EMA of another width from a run's snapshots (EDM2 post-hoc EMA)."""
    from . import posthoc_ema

    if not exists(args.run):
        raise UserError(f"no trained component in {args.run}")
    saved = posthoc_ema.save(args.run, args.sigma_rel, writable(args.out), args.step)
    print(f"EMA sigma_rel {args.sigma_rel} of {args.run}: {saved}")


def cmd_export(args: argparse.Namespace) -> None:
    """Copy trained components to a folder to ship (float16 parameters, no training state)."""
    runs, out = Path(args.runs), writable(args.out)
    found = [s for s in STAGES if exists(runs / s)]
    if not found:
        raise UserError(f"no trained components in {runs} (looked for {', '.join(STAGES)})")
    for stage in found:
        dest = export_component(runs / stage, out / stage)
        size = sum(f.stat().st_size for f in dest.iterdir()) / 1e6
        print(f"{stage}: {dest} ({size:.1f} MB)")


def _load_image(path: str):  # noqa: ANN202
    """An image file as a float tensor (3, H, W) in [0, 1]; UserError if it is not one."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB")).float() / 255
    except FileNotFoundError:
        raise UserError(f"no such image file: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path} is not an image PIL can read ({type(e).__name__})") from None


def _caption(text: str, flag: str) -> str:
    """A caption as given, or a UserError for one with no words."""
    if not text.strip():
        raise UserError(f'{flag} is empty: give a caption, e.g. "a red circle on the left"')
    return text


def _model(args: argparse.Namespace):  # noqa: ANN202
    from .pipeline import UnCLIP

    return UnCLIP.load(args.checkpoint)


def cmd_sample(args: argparse.Namespace) -> None:
    """Generate images for captions."""
    captions = [_caption(c, "--caption") for c in args.caption for _ in range(args.n)]
    images = _model(args).generate(
        captions,
        seed=args.seed,
        prior=args.prior,
        decoder_guidance=args.decoder_guidance,
        prior_guidance=args.prior_guidance,
        steps=args.steps,
    )
    save_grid(images, args.out, nrow=args.n)


def _manipulation(args: argparse.Namespace) -> dict:
    """The settings every §3 manipulation takes from the command line."""
    return {"guidance": args.guidance, "steps": args.steps, "seed": args.seed}


def cmd_vary(args: argparse.Namespace) -> None:
    """Variations of an image (§3.1)."""
    image = _load_image(args.image)
    images = _model(args).variations(image, n=args.n, eta=args.eta, **_manipulation(args))
    save_grid(images, args.out, nrow=args.n)


def cmd_interpolate(args: argparse.Namespace) -> None:
    """Interpolate between two images (§3.2)."""
    a, b = _load_image(args.image_a), _load_image(args.image_b)
    images = _model(args).interpolate(a, b, n=args.n, **_manipulation(args))
    save_grid(images, args.out, nrow=args.n)


def cmd_textdiff(args: argparse.Namespace) -> None:
    """Move an image along a text diff (§3.3)."""
    from_, to = _caption(args.from_, "--from"), _caption(args.to, "--to")
    image = _load_image(args.image)
    images = _model(args).text_diff(
        image, from_, to, n=args.n, amount=args.amount, method=args.method, **_manipulation(args)
    )
    save_grid(images, args.out, nrow=args.n)


def cmd_params(args: argparse.Namespace) -> None:
    """Parameter counts of a preset's components (on the meta device: nothing is allocated)."""
    import torch

    from .config import PAPER_PARAMETERS

    preset = get_preset(args.preset)
    print(f"{'component':16s} {'this code':>12s} {'paper (Table 3)':>16s}")
    for stage in ("prior-diffusion", "prior-ar", "decoder", "upsampler1", "upsampler2"):
        with torch.device("meta"):
            module = STAGES[stage].build(preset)
        n = sum(p.numel() for p in module.parameters())
        paper = PAPER_PARAMETERS.get(stage) if preset.name == "paper" else None
        print(f"{stage:16s} {n / 1e6:10.1f} M {'' if paper is None else f'{paper / 1e6:14.0f} M'}")
    if preset.name == "paper":
        print(
            "the decoder counts GLIDE's text encoder (width 2048, 24 layers); the paper's "
            "priors have one too, ours read the frozen CLIP's token states"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = Parser(prog="python -m unclip_repro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one stage of a preset")
    p.add_argument("--preset", default="shapes", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--stage", required=True, help=f"one of: {', '.join(STAGES)}")
    p.add_argument("--steps", type=int, help="total steps to reach (default: the preset's)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--init", help="start a new run from this checkpoint's weights (fine-tuning, new optimiser)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a preset setting (repeat for several): decoder.guidance=4, "
        "train.lr=1e-3 (train.FIELD: this stage's), train.fsdp=true (shard under torchrun), "
        "train.cpu_bf16=true; recorded in the checkpoint",
    )
    p.add_argument(
        "--overrides", metavar="FILE", help="a TOML file of settings to change, before --set"
    )
    p.add_argument(
        "--clip", help="the frozen CLIP's run folder, for the priors (default: clip/ beside --out)"
    )
    p.add_argument(
        "--clip-model",
        help="--stage clip: import this pretrained OpenCLIP (open_clip name or model-config JSON)",
    )
    p.add_argument("--clip-checkpoint", help="--stage clip: its local weights file")
    real = p.add_argument_group("real image-caption pairs (a real-data preset, e.g. coco-smoke)")
    real.add_argument("--annotations", help="COCO captions JSON (with --images)")
    real.add_argument("--images", help="the folder of the COCO images")
    real.add_argument("--pairs", help="CSV/TSV/JSONL/Parquet of image,caption (with --root)")
    real.add_argument("--root", help="the folder the --pairs image paths are relative to")
    real.add_argument("--shards", help="WebDataset shards, e.g. 'data/{00000..00099}.tar'")
    real.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    real.add_argument(
        "--max-bad", type=float, help="fraction of unreadable images tolerated (default 0.05)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-all", help="train every component of a Shapes preset (resumable)")
    p.add_argument("--preset", default="shapes", help="shapes or shapes-smoke")
    p.add_argument("--runs", default="runs", help="run folders go to RUNS/PRESET/COMPONENT")
    p.add_argument(
        "--budget", help="scale every stage's steps to this time, e.g. 30m (RUNS/PRESET-30m)"
    )
    p.add_argument(
        "--stages",
        help="only these components (trained in the pipeline's order), e.g. glide,upsampler1",
    )
    p.set_defaults(func=cmd_train_all)

    p = sub.add_parser(
        "posthoc-ema", help="the EMA of another width from a run's snapshots (EDM2, after training)"
    )
    p.add_argument("--run", required=True, help="a run trained with train.STAGE.ema_snapshot_every")
    p.add_argument("--sigma-rel", type=float, required=True, help="the EMA's relative width")
    p.add_argument("--step", type=int, help="at this snapshot's step (default: the last)")
    p.add_argument("--out", required=True, help="folder of the new component (e.g. runs/x/glide)")
    p.set_defaults(func=cmd_posthoc_ema)

    p = sub.add_parser("export", help="copy trained components to ship (fp16, no train state)")
    p.add_argument("--runs", default="runs/shapes", help="folder with clip/, prior-*/ ...")
    p.add_argument("--out", required=True, help="destination (unclip_repro/checkpoints/shapes)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("params", help="parameter counts of a preset, beside the paper's")
    p.add_argument("--preset", default="paper", help=f"one of: {', '.join(PRESETS)}")
    p.set_defaults(func=cmd_params)

    def common(p: argparse.ArgumentParser, n: int) -> None:
        p.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
        p.add_argument("--num-samples", dest="n", type=int, default=n, help="images per row")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True, help="PNG grid to write")

    p = sub.add_parser("sample", help="generate images for captions")
    p.add_argument("--caption", action="append", required=True, help="repeat for several")
    p.add_argument("--prior", default="diffusion", help="diffusion, ar, text or none")
    p.add_argument("--decoder-guidance", type=float)
    p.add_argument("--prior-guidance", type=float)
    p.add_argument("--steps", type=int, help="decoder sampling steps")
    common(p, 4)
    p.set_defaults(func=cmd_sample)

    def manipulation(p: argparse.ArgumentParser, n: int) -> None:
        p.add_argument(
            "--guidance", type=float, default=MANIPULATION_GUIDANCE,
            help="decoder guidance while inverting and decoding (default %(default)s: exact "
            "inversion; results/manipulations.md)",
        )  # fmt: skip
        p.add_argument("--steps", type=int, help="DDIM steps (default: the decoder's)")
        common(p, n)

    p = sub.add_parser("vary", help="variations of an image (§3.1)")
    p.add_argument("--image", required=True)
    p.add_argument("--eta", type=float, default=VARIATION_ETA, help="DDIM η > 0: how much changes")
    manipulation(p, 4)
    p.set_defaults(func=cmd_vary)

    p = sub.add_parser("interpolate", help="interpolate between two images (§3.2)")
    p.add_argument("--image-a", required=True)
    p.add_argument("--image-b", required=True)
    manipulation(p, 5)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("textdiff", help="move an image along a text diff (§3.3)")
    p.add_argument("--image", required=True)
    p.add_argument("--from", dest="from_", required=True, help="caption describing the image")
    p.add_argument("--to", required=True, help="caption describing the change")
    p.add_argument(
        "--method", choices=TEXT_DIFFS, default=TEXT_DIFF_METHOD,
        help="text: the paper's slerp towards z_t(to) - z_t(from); prior: a shift by the "
        "difference of the prior's image embeddings; caption: that shift, the decoder also "
        "reading --from while inverting and --to while decoding (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--amount", type=float, help="largest θ (text, default 0.5) or λ (prior, 1)")
    manipulation(p, 5)
    p.set_defaults(func=cmd_textdiff)

    def body() -> None:
        parsed = parser.parse_args(argv)
        parsed.func(parsed)

    return run(body)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
