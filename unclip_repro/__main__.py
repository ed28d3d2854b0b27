"""The command line: `python -m unclip_repro demo | train | ...`.

Bad input (an unknown preset or stage, an unwritable folder, a corrupt or mismatched
checkpoint, a file that is not an image) ends with one line on stderr and a non-zero exit,
never a traceback; a warning (a caption's unknown words) is one `warning: ...` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .checkpoint import CheckpointError, exists, load_config
from .config import PRESETS, get_preset
from .train import (
    STAGES,
    TrainingDiverged,
    check_resumable,
    export_component,
    load_frozen_clip,
    train,
)


class UserError(Exception):
    """An error the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(f"{message} (see `python -m {self.prog} --help`)")


def _writable(folder: str | Path) -> Path:
    """`folder`, created if needed; UserError if it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror or e}") from None
    return folder


def cmd_train(args: argparse.Namespace) -> None:
    """Train one stage of a preset."""
    preset = get_preset(args.preset)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    out = _writable(args.out)
    result = train(preset, args.stage, out, steps=args.steps, resume=args.resume, clip=args.clip)
    print(
        f"trained {args.stage} of {preset.name} to step {result.step} "
        f"(loss {result.loss:.4f}, {result.seconds:.0f} s); checkpoint: {result.checkpoint}"
    )


def _resumable(run_dir: Path, preset: str, stage: str) -> Path:
    """`run_dir`, with a checkpoint made by other settings (an older version, another CLIP)
    moved aside."""
    if exists(run_dir):
        try:
            frozen = None
            if STAGES[stage].needs_clip:
                frozen = load_frozen_clip(run_dir.parent / "clip", run_dir.parent, "cpu", False)
            check_resumable(load_config(run_dir), get_preset(preset), stage, run_dir, frozen)
        except CheckpointError:
            stale = run_dir.with_name(f"{run_dir.name}.stale-{int(time.time())}")
            run_dir.rename(stale)
            print(f"{run_dir} was trained with other settings; moved to {stale}, training anew")
    return run_dir


DEMO_STAGES = tuple(STAGES)  # clip, both priors, decoder, GLIDE baseline, both upsamplers


def cmd_demo(args: argparse.Namespace) -> None:
    """Train the whole stack on a Shapes preset, measure it, write a report."""
    import torch

    preset = get_preset(args.preset)
    if preset.data.dataset != "shapes":
        raise UserError(f"the demo runs on a Shapes preset, not {preset.name!r}")
    runs, out = _writable(Path(args.runs) / preset.name), _writable(args.out)
    start, seconds = time.perf_counter(), {}
    for stage in DEMO_STAGES:
        run_dir = _resumable(runs / stage, preset.name, stage)
        t0 = time.perf_counter()  # the pool of embeddings is encoded inside the first prior's
        result = train(get_preset(args.preset), stage, run_dir, resume=exists(run_dir))
        seconds[stage] = round(time.perf_counter() - t0, 1)
        print(f"{stage}: {result.step} steps, {seconds[stage]:.0f} s this run")
    trained = time.perf_counter() - start
    command = f"python -m unclip_repro demo --preset {preset.name}"
    _demo_clip_and_priors(runs, out, args.num_eval, command)
    _demo_generation(runs, out, args.num_generate, command)
    reports = time.perf_counter() - start - trained
    timing = {"seconds_per_stage_this_run": seconds, "training_min": round(trained / 60, 2)}
    timing |= {"reports_min": round(reports / 60, 2), "torch_threads": torch.get_num_threads()}
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(f"training {trained / 60:.1f} min, reports {reports / 60:.1f} min; reports in {out}")


def _demo_clip_and_priors(runs: Path, out: Path, n: int, command: str) -> None:
    from eval.priors import load_priors, measure, to_markdown

    from .clip import plot_report, shapes_report

    # CLIP at its own resolution, loaded once; the priors at the paper's settings only (the
    # demo's budget: `python -m eval.priors` adds the other sampling settings)
    clip, resolution, priors, _ = load_priors(runs, variants=False)
    report = shapes_report(clip, resolution, n=n)
    (out / "clip_report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(clip, resolution, out / "clip_retrieval.png")
    print(
        f"CLIP, held-out text->image retrieval top-1: {report['retrieval_top1']:.1%} "
        f"(exact image), {report['retrieval_top1_match']:.1%} (an image matching the caption)"
    )
    table = measure(clip, priors, min(n, 200), resolution)
    (out / "priors.md").write_text(to_markdown(table, command))
    for row in table.itertuples():
        print(f"{row.prior}: cos(ẑ_i, z_i) {row.cos_true:.3f}, retrieval {row.retrieval_match:.1%}")


def _demo_generation(runs: Path, out: Path, n: int, command: str) -> None:
    """Oracle accuracy (unCLIP vs GLIDE), and the figures: held-out captions through the
    whole stack, variations, an interpolation and a text diff."""
    from eval import generation

    from .data import shapes
    from .pipeline import UnCLIP

    model = UnCLIP.load(runs)
    table, gallery = generation.measure(model, n, splits=("heldout",))  # the demo's budget
    table.to_csv(out / "generation.csv", index=False, float_format="%.4f")
    (out / "generation.md").write_text(generation.to_markdown(table, command))
    scenes = generation.scenes(n, 1, "heldout")
    captions = [shapes.caption(s) for s in scenes]
    generation.plot_gallery(gallery, captions, out / "generation.png")
    for row in table[(table.objects == 1) & (table.split == "heldout")].itertuples():
        print(f"{row.method}: held-out single-object captions all right {row.all:.0%}")

    _save_grid(model.generate(captions[:8], seed=0), out / "samples.png", nrow=8)
    R = model.decoder.resolution
    a, b = (shapes.to_tensor(shapes.render(s, R)) for s in scenes[:2])
    _save_grid([a, b], out / "inputs.png", nrow=2)
    _save_grid(model.variations(a, n=6), out / "variations.png", nrow=6)
    _save_grid(model.interpolate(a, b, n=6), out / "interpolation.png", nrow=6)
    diff = model.text_diff(a, captions[0], captions[1], n=6)
    _save_grid(diff, out / "textdiff.png", nrow=6)


def cmd_export(args: argparse.Namespace) -> None:
    """Copy trained components to a folder to ship (float16 parameters, no training state)."""
    runs, out = Path(args.runs), _writable(args.out)
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


def _save_grid(images, path: str, nrow: int) -> None:  # noqa: ANN001
    from torchvision.utils import save_image

    out = Path(path)
    _writable(out.parent)
    save_image(images, out, nrow=nrow, padding=2)
    print(f"wrote {out} ({len(images)} images)")


def _model(args: argparse.Namespace):  # noqa: ANN202
    from .pipeline import UnCLIP

    return UnCLIP.load(args.checkpoint)


def cmd_sample(args: argparse.Namespace) -> None:
    """Generate images for captions."""
    captions = [c for c in args.caption for _ in range(args.n)]
    images = _model(args).generate(
        captions,
        seed=args.seed,
        prior=args.prior,
        decoder_guidance=args.decoder_guidance,
        prior_guidance=args.prior_guidance,
        steps=args.steps,
    )
    _save_grid(images, args.out, nrow=args.n)


def cmd_vary(args: argparse.Namespace) -> None:
    """Variations of an image (§3.1)."""
    image = _load_image(args.image)
    images = _model(args).variations(image, n=args.n, eta=args.eta, seed=args.seed)
    _save_grid(images, args.out, nrow=args.n)


def cmd_interpolate(args: argparse.Namespace) -> None:
    """Interpolate between two images (§3.2)."""
    a, b = _load_image(args.image_a), _load_image(args.image_b)
    _save_grid(_model(args).interpolate(a, b, n=args.n, seed=args.seed), args.out, nrow=args.n)


def cmd_textdiff(args: argparse.Namespace) -> None:
    """Move an image along a text diff (§3.3)."""
    image = _load_image(args.image)
    images = _model(args).text_diff(image, args.from_, args.to, n=args.n, seed=args.seed)
    _save_grid(images, args.out, nrow=args.n)


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
            "the paper's priors and decoder include a 1.2B text encoder of their own "
            "(width 2048, 24 layers); ours read the frozen CLIP's token states instead"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = _Parser(prog="unclip_repro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one stage of a preset")
    p.add_argument("--preset", default="shapes", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--stage", required=True, help=f"one of: {', '.join(STAGES)}")
    p.add_argument("--steps", type=int, help="total steps to reach (default: the preset's)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--clip", help="the frozen CLIP's run folder, for the priors (default: clip/ beside --out)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="train the Shapes stack and write its report")
    p.add_argument("--preset", default="shapes", help="shapes or shapes-smoke")
    p.add_argument("--out", default="results/demo", help="report folder")
    p.add_argument("--runs", default="runs", help="where checkpoints go (resumed if present)")
    p.add_argument("--num-eval", type=int, default=500, help="held-out scenes to measure on")
    p.add_argument(
        "--num-generate", type=int, default=32, help="captions per set in the oracle report"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="copy trained components to ship (fp16, no train state)")
    p.add_argument("--runs", default="runs/shapes", help="folder with clip/, prior-*/ ...")
    p.add_argument("--out", default="checkpoints/shapes", help="destination folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("params", help="parameter counts of a preset, beside the paper's")
    p.add_argument("--preset", default="paper", help=f"one of: {', '.join(PRESETS)}")
    p.set_defaults(func=cmd_params)

    def common(p: argparse.ArgumentParser, n: int) -> None:
        p.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
        p.add_argument("--n", type=int, default=n, help="images per caption / per row")
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

    p = sub.add_parser("vary", help="variations of an image (§3.1)")
    p.add_argument("--image", required=True)
    p.add_argument("--eta", type=float, default=0.8, help="DDIM η > 0: how much changes")
    common(p, 4)
    p.set_defaults(func=cmd_vary)

    p = sub.add_parser("interpolate", help="interpolate between two images (§3.2)")
    p.add_argument("--image-a", required=True)
    p.add_argument("--image-b", required=True)
    common(p, 5)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("textdiff", help="move an image along a text diff (§3.3)")
    p.add_argument("--image", required=True)
    p.add_argument("--from", dest="from_", required=True, help="caption describing the image")
    p.add_argument("--to", required=True, help="caption describing the change")
    common(p, 5)
    p.set_defaults(func=cmd_textdiff)

    def one_line(message, category, *_args, **_kwargs) -> None:  # noqa: ANN001
        print(f"warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            args = parser.parse_args(argv)
            args.func(args)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (UserError, ValueError, FileExistsError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (rerun with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
