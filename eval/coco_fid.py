"""Zero-shot FID (Table 2 of unCLIP): generate one image per sampled caption, compare with the
real images at the evaluation resolution.

    python -m eval.coco_fid --dataset shapes                          # no files needed
    python -m eval.coco_fid --annotations captions_val2014.json --images val2014/ \\
        --checkpoint runs/coco --inception-weights inception-2015-12-05.pt
    torchrun --nproc-per-node 8 -m eval.coco_fid ...                  # generation sharded

The paper's protocol: 30,000 captions sampled from the MS-COCO validation captions, images at
256×256, FID against the validation images with Inception-v3 features (clean-fid's, from a
local file). Offline features: `--features clip` (the checkpoint's CLIP) or `shapes` (the
Shapes network shipped in eval/weights/, the default for `--dataset shapes`, so Shapes FIDs
compare across runs). On Shapes the captions are seeded scenes of the training pairs and the
real images are those scenes' renders. Several `--method`s share one reference: `diffusion`,
`ar` (unCLIP with either prior), `text` (z_t fed as z_i, §5.1), `none` (caption only, z_i
dropped), `glide` (the GLIDE baseline) and, on Shapes, `real` (fresh renders of the same
captions: the FID a perfect generator would get at this sample size). Reference statistics
are cached (`--cache-dir`); generated features are saved per chunk in `--work-dir`, so a
rerun resumes where it stopped, and under torchrun each rank generates every world-size-th
chunk while rank 0 computes FID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from eval import features
from eval.metrics import (
    EvalError,
    Parser,
    Stats,
    cache_key,
    cached_stats,
    fid,
    load_model,
    require_methods,
    run,
    write_results,
)
from unclip_repro import checkpoint
from unclip_repro.data import shapes
from unclip_repro.pipeline import COMPONENTS, UnknownWordsWarning

COMMAND = "python -m eval.coco_fid"
METHODS = ("diffusion", "ar", "text", "none", "glide", "real")
MAX_BAD_FRACTION = 0.05  # more unreadable reference images than this: the folder is wrong


@dataclass
class EvalSet:
    """Captions to generate from and the real images to compare with (files, or scenes)."""

    captions: list[str]
    files: list[Path] = field(default_factory=list)  # COCO: the reference images
    scenes: list[shapes.Scene] = field(default_factory=list)  # Shapes: rendered instead
    counts: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvalError(f"no such annotations file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path} is not valid JSON ({e})") from None
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise EvalError(
                f"{path} has no {key!r} list: is it a COCO captions file (captions_val2014.json)?"
            )
    return data


def _field(entry: object, key: str, kind: type, where: str) -> object:
    if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
        raise EvalError(f"{where} lacks {key!r} (a {kind.__name__}): {str(entry)[:80]}")
    return entry[key]


def load_coco(annotations: str | Path, images: str | Path) -> EvalSet:
    """Captions and image files of a COCO captions file; duplicates and captions of unknown
    images are dropped and counted, malformed entries are errors."""
    path, folder = Path(annotations), Path(images)
    if not folder.is_dir():
        raise EvalError(f"no such image folder: {folder}")
    data = _read_json(path)
    files: dict[int, str] = {}
    counts: Counter[str] = Counter()
    for i, entry in enumerate(data["images"]):
        image_id = _field(entry, "id", int, f"{path}: images[{i}]")
        name = _field(entry, "file_name", str, f"{path}: images[{i}]")
        if image_id in files:
            if files[image_id] != name:
                raise EvalError(
                    f"{path}: image id {image_id} names two files ({files[image_id]}, {name})"
                )
            counts["duplicate_images"] += 1
            continue
        files[image_id] = name
    captions, seen = [], set()
    for i, entry in enumerate(data["annotations"]):
        image_id = _field(entry, "image_id", int, f"{path}: annotations[{i}]")
        text = " ".join(str(_field(entry, "caption", str, f"{path}: annotations[{i}]")).split())
        key = entry.get("id", (image_id, text))
        if key in seen:
            counts["duplicate_captions"] += 1
        elif image_id not in files:
            counts["captions_of_unknown_images"] += 1
        elif text:
            seen.add(key)
            captions.append(text)
    if not captions:
        raise EvalError(f"{path} holds no usable captions")
    return EvalSet(captions, [folder / files[k] for k in sorted(files)], counts=dict(counts))


def load_captions_csv(csv: str | Path, images: str | Path) -> EvalSet:
    """A CSV with a `caption` column; the reference images are every image in `images`."""
    try:
        table = pd.read_csv(csv)
    except FileNotFoundError:
        raise EvalError(f"no such captions file: {csv}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise EvalError(f"{csv} is not a readable CSV ({str(e).splitlines()[0]})") from None
    if "caption" not in table.columns:
        raise EvalError(f"{csv} has no 'caption' column (columns: {', '.join(table.columns)})")
    captions = [" ".join(str(c).split()) for c in table["caption"].dropna()]
    folder = Path(images)
    if not folder.is_dir():
        raise EvalError(f"no such image folder: {folder}")
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts)
    if not captions:
        raise EvalError(f"no captions in {csv}")
    if not files:
        raise EvalError(f"no images ({', '.join(sorted(exts))}) in {folder}")
    return EvalSet(captions, files)


def shapes_set(n: int, seed: int) -> EvalSet:
    """n seeded Shapes scenes of the training pairs (1 or 2 objects), their canonical captions."""
    rng = np.random.default_rng([seed, 41])
    scenes = [shapes.random_scene(rng, split="train") for _ in range(n)]
    return EvalSet([shapes.caption(s) for s in scenes], scenes=scenes)


def load_image(path: Path, resolution: int) -> tuple[torch.Tensor | None, str]:
    """(3, R, R) float in [0, 1], centre-cropped and resized (PIL bicubic), and the file's
    mode; (None, reason) for a file that is missing or not a readable image."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            mode = image.mode
            if mode == "RGBA" or (mode == "P" and "transparency" in image.info):
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image.convert("RGBA"))
            image = image.convert("RGB")
    except FileNotFoundError:
        return None, "missing"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, "unreadable"
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return pixels.float() / 255, mode


def reference_features(
    data: EvalSet, extractor: features.Extractor, resolution: int, batch_size: int, progress: bool
) -> tuple[np.ndarray, dict]:
    """Features of the real images, with counts of images used, converted and skipped."""
    out, counts, skipped = [], Counter(), []
    if data.scenes:
        images = shapes.render_batch(data.scenes, resolution)
        return extractor(images, batch_size).numpy(), {"reference_images": len(images)}
    on_terminal = None if progress else True  # tqdm's None: a bar on a terminal only
    bar = tqdm(total=len(data.files), desc="reference images", disable=on_terminal)
    for start in range(0, len(data.files), batch_size):
        batch = []
        for path in data.files[start : start + batch_size]:
            image, mode = load_image(path, resolution)
            if image is None:
                counts[f"skipped_{mode}"] += 1
                skipped.append(path.name)
            else:
                counts[f"mode_{mode}"] += 1
                batch.append(image)
        if batch:
            out.append(extractor(torch.stack(batch), batch_size).numpy())
        bar.update(len(data.files[start : start + batch_size]))
    bar.close()
    n_bad = len(skipped)
    if n_bad > MAX_BAD_FRACTION * len(data.files) or not out:
        raise EvalError(
            f"{n_bad} of {len(data.files)} reference images are missing or unreadable (first: "
            f"{', '.join(skipped[:3])}): is --images the folder the annotations describe?"
        )
    if skipped:
        names = ", ".join(skipped[:5])
        print(f"warning: skipped {n_bad} unreadable images: {names}", file=sys.stderr)
    info = dict(counts) | {"reference_images": sum(len(f) for f in out), "skipped": skipped[:20]}
    return np.concatenate(out), info


# ----------------------------------------------------------------------------- generation


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _generate(model, method: str, args: argparse.Namespace, data: EvalSet):  # noqa: ANN001, ANN202
    """f(captions, seed) -> images (B, 3, R, R) in [0, 1] at the evaluation resolution.
    `real` (Shapes only): fresh renders of the captions (new residual detail), FID's floor."""
    settings = {"steps": args.steps, "upsample": not args.no_upsample}
    scene_of = {shapes.caption(s): s for s in data.scenes}

    def fn(captions: list[str], seed: int) -> torch.Tensor:
        if method == "real":
            rng = np.random.default_rng(seed)
            scenes = [shapes.redraw(scene_of[c], rng) for c in captions]
            return shapes.render_batch(scenes, args.resolution)
        if method == "glide":
            images = model.generate_glide(
                captions, seed, guidance=args.decoder_guidance, **settings
            )
        else:
            images = model.generate(
                captions,
                seed,
                prior=method,
                decoder_guidance=args.decoder_guidance,
                prior_guidance=args.prior_guidance,
                **settings,
            )
        R = args.resolution
        if images.shape[-1] != R:
            images = F.interpolate(images, size=(R, R), mode="bicubic", antialias=True)
        return images.clamp(0, 1)

    return fn


def generated_features(
    model,  # noqa: ANN001
    method: str,
    data: EvalSet,
    extractor: features.Extractor,
    work: Path,
    args: argparse.Namespace,
    rank: int,
    world: int,
) -> tuple[np.ndarray, float] | None:
    """Features of one image per caption, chunk by chunk into `work` (finished chunks are
    kept: a rerun resumes); rank r does chunks r, r + world, …; rank 0 returns them all and
    the seconds spent generating them (summed over ranks and over resumed runs)."""
    from torchvision.utils import save_image

    work.mkdir(parents=True, exist_ok=True)
    captions = data.captions
    generate, B = _generate(model, method, args, data), args.batch_size
    chunks = list(range(0, len(captions), B))
    mine = [i for k, i in enumerate(chunks) if k % world == rank]
    todo = [i for i in mine if not (work / f"chunk-{i:07d}.safetensors").is_file()]
    size = lambda i: min(B, len(captions) - i)  # noqa: E731
    bar = tqdm(
        total=sum(map(size, mine)),
        initial=sum(size(i) for i in mine if i not in todo),
        disable=None if rank == 0 else True,  # rank 0, on a terminal
        desc=f"generating ({method})",
    )
    for i in todo:
        start = time.perf_counter()
        images = generate(captions[i : i + B], args.seed * 1_000_003 + i)
        seconds = torch.tensor([time.perf_counter() - start])  # generation time, kept
        if i == 0:
            save_image(images[:16], work / "samples.png", nrow=8, padding=2)
        file = work / f"chunk-{i:07d}.safetensors"
        tmp = file.with_name(f".{file.name}.{os.getpid()}")
        save_file({"features": extractor(images, B).contiguous(), "seconds": seconds}, tmp)
        os.replace(tmp, file)  # a crash never leaves half a chunk
        bar.update(len(images))
    bar.close()
    if world > 1:
        dist.barrier()
    if rank != 0:
        return None
    loaded = [load_file(work / f"chunk-{i:07d}.safetensors") for i in chunks]
    seconds = sum(float(c["seconds"].sum()) for c in loaded)
    return torch.cat([c["features"] for c in loaded]).numpy(), seconds


# ----------------------------------------------------------------------------- main


def _extractor(args: argparse.Namespace, model, device: str) -> features.Extractor:  # noqa: ANN001
    try:
        if args.features == "inception":
            return features.inception(args.inception_weights, device)
        if args.features == "shapes":
            return features.shapes_features()
    except features.MissingWeights as e:
        raise EvalError(str(e)) from None
    clip_id = checkpoint.identity(Path(args.checkpoint_dir) / "clip")
    return features.clip_features(model.clip, clip_id)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog=COMMAND, description=__doc__.splitlines()[0])
    src = p.add_argument_group("evaluation set")
    src.add_argument("--dataset", choices=("coco", "shapes"), default="coco")
    src.add_argument("--annotations", help="COCO captions JSON (captions_val2014.json)")
    src.add_argument("--captions", help="instead of --annotations: a CSV with a caption column")
    src.add_argument("--images", help="folder of the real images")
    src.add_argument("--num-samples", type=int, help="captions (default 30000 COCO, 500 Shapes)")
    src.add_argument("--num-reference", type=int, help="at most this many real images")
    src.add_argument("--seed", type=int, default=0)
    gen = p.add_argument_group("generation")
    gen.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
    gen.add_argument("--method", nargs="+", default=["diffusion"], choices=METHODS)
    gen.add_argument("--decoder-guidance", type=float, help="default: the checkpoint's")
    gen.add_argument("--prior-guidance", type=float, help="default: the checkpoint's")
    gen.add_argument("--steps", type=int, help="decoder sampling steps (default: checkpoint's)")
    gen.add_argument("--no-upsample", action="store_true", help="stop at the base resolution")
    gen.add_argument("--batch-size", type=int, default=50)
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev = p.add_argument_group("features and output")
    ev.add_argument("--features", choices=("inception", "clip", "shapes"))
    ev.add_argument("--inception-weights", help=f"local {features.INCEPTION_FILE}")
    ev.add_argument("--resolution", type=int, help="evaluation side (default 256 COCO, 32 Shapes)")
    ev.add_argument("--cache-dir", default="runs/fid/cache", help="cached reference statistics")
    ev.add_argument("--work-dir", default="runs/fid", help="generated features, per chunk")
    ev.add_argument("--out", default="results/fid", help="report folder")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    shapes_world = args.dataset == "shapes"
    args.features = args.features or ("shapes" if shapes_world else "inception")
    if args.num_samples is None:
        args.num_samples = 500 if shapes_world else 30_000
    if args.resolution is None:
        args.resolution = 32 if shapes_world else 256
    if shapes_world:  # the decoder's own 32 px: the upsamplers only when asked for more
        args.no_upsample = args.no_upsample or args.resolution <= 32
    elif not args.images or not (args.annotations or args.captions):
        p.error("--dataset coco needs --images and --annotations (or --captions)")
    for name in ("num_samples", "batch_size", "resolution"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def evaluate(args: argparse.Namespace) -> pd.DataFrame:
    """The whole run; returns one row per method (rank 0) or an empty frame."""
    rank, world = _distributed()
    device = args.device
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    start = time.perf_counter()
    if args.dataset == "shapes":
        data = shapes_set(args.num_samples, args.seed)
    elif args.annotations:
        data = load_coco(args.annotations, args.images)
    else:
        data = load_captions_csv(args.captions, args.images)
    rng = np.random.default_rng([args.seed, 43])
    if not data.scenes:  # COCO: sample captions (and, if asked, a subset of the images)
        n = min(args.num_samples, len(data.captions))
        if n < args.num_samples:
            print(f"note: only {n} captions available; using all of them", file=sys.stderr)
        data.captions = [data.captions[i] for i in sorted(rng.choice(len(data.captions), n, False))]
        if args.num_reference and args.num_reference < len(data.files):
            keep = sorted(rng.choice(len(data.files), args.num_reference, replace=False))
            data.files = [data.files[i] for i in keep]
    model = load_model(args.checkpoint, device)
    require_methods(model, args.method, args.checkpoint)
    if "real" in args.method and not data.scenes:
        raise EvalError("--method real (fresh renders of the captions) needs --dataset shapes")
    folder = Path(args.checkpoint)
    args.checkpoint_dir = folder if folder.is_dir() else checkpoint.shipped(args.checkpoint)
    extractor = _extractor(args, model, device)
    unknown = Counter(w for c in set(data.captions) for w in model.clip.unknown_words(c))
    if unknown and rank == 0:  # once here, not a warning per batch
        common = ", ".join(w for w, _ in unknown.most_common(8))
        print(f"note: {len(unknown)} caption words are unknown to this CLIP ({common}, …)")
    data.counts["unknown_caption_words"] = len(unknown)
    warnings.simplefilter("ignore", UnknownWordsWarning)

    ref_info = {}
    if rank == 0:
        ident = (
            {"shapes": [args.num_samples, args.seed]}
            if data.scenes
            else [(str(p), *_stat(p)) for p in data.files]
        )
        key = cache_key(images=ident, features=extractor.name, resolution=args.resolution)
        ref, ref_info = cached_stats(
            args.cache_dir,
            key,
            lambda: reference_features(data, extractor, args.resolution, args.batch_size, True),
        )
    weights = {  # the exact files (shipped fp16 copies differ from their fp32 runs)
        name: checkpoint.file_sha256(
            checkpoint.resolve(args.checkpoint_dir / name) / checkpoint.WEIGHTS
        )
        for name in COMPONENTS
        if checkpoint.exists(args.checkpoint_dir / name)
    }
    rows = []
    for method in args.method:
        settings = {
            k: getattr(args, k)
            for k in (
                "decoder_guidance",
                "prior_guidance",
                "steps",
                "no_upsample",
                "resolution",
                "seed",
                "batch_size",
            )
        }
        run_id = cache_key(
            captions=data.captions,
            method=method,
            features=extractor.name,
            weights=weights,
            **settings,
        )
        work = Path(args.work_dir) / f"{args.dataset}-{method}-{run_id}"
        out = generated_features(model, method, data, extractor, work, args, rank, world)
        if rank == 0:
            fake, seconds = out
            rows.append(
                {
                    "method": method,
                    "fid": fid(ref, Stats.of(fake)),
                    "features": extractor.name,
                    "images": len(fake),
                    "captions": len(set(data.captions)),
                    "reference_images": ref.n,
                    "resolution": args.resolution,
                    "s_per_image": round(seconds / len(fake), 4),
                    "work_dir": str(work),
                }
            )
            print(f"{method}: FID {rows[-1]['fid']:.2f} ({len(fake)} images vs {ref.n} real)")
    if rank == 0:
        _report(args, pd.DataFrame(rows), data, ref_info, time.perf_counter() - start)
    if world > 1:
        dist.destroy_process_group()
    return pd.DataFrame(rows)


def _stat(path: Path) -> tuple[int, int]:
    try:
        s = path.stat()
        return s.st_size, s.st_mtime_ns
    except OSError:
        return -1, -1


def _report(args, table: pd.DataFrame, data: EvalSet, ref_info: dict, seconds: float) -> None:  # noqa: ANN001
    name = f"fid-{args.dataset}"
    write_results(
        args.out,
        name,
        table.drop(columns=["work_dir"]),
        " ".join([COMMAND, *args.argv]),
        seconds,
        args.device,
        "%.3f",
        rows=table.to_dict("records"),
        annotation_counts=data.counts,
        reference=ref_info,
    )
    print(f"wrote {Path(args.out) / name}.json and .csv ({seconds / 60:.1f} min)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""

    def body() -> int:
        evaluate(parse_args(argv))
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
