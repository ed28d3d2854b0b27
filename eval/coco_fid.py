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
real images are those scenes' renders. Several `--methods` share one reference: `diffusion`,
`ar` (unCLIP with either prior), `text` (z_t fed as z_i, §5.1), `none` (caption only, z_i
dropped), `glide` (the GLIDE baseline) and, on Shapes, `real` (fresh renders of the same
captions: the FID a perfect generator would get at this sample size). Reference statistics
are cached (`--cache-dir`); generated features are saved per chunk in `--work-dir`, so a
rerun resumes where it stopped, and under torchrun each rank generates every world-size-th
chunk while rank 0 computes FID.
"""

from __future__ import annotations

import datetime
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
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from eval import features
from eval.metrics import (
    Method,
    Stats,
    batch_seed,
    cache_key,
    cached_stats,
    fid,
    load_model,
    method_fn,
    require_methods,
    scene_set,
    write_results,
)
from unclip_repro import checkpoint, distributed
from unclip_repro.cli import Parser, UserError, positive, run
from unclip_repro.components import STAGES
from unclip_repro.data import shapes
from unclip_repro.data.captions import (
    IMAGE_EXTS,
    MAX_BAD,
    image_files,
    load_coco,
    load_image,
    probe_images,
    read_table,
    too_many_bad,
)
from unclip_repro.files import atomic_path
from unclip_repro.pipeline import UnCLIP, UnknownWordsWarning

COMMAND = "python -m eval.coco_fid"
FID_METHODS = ("diffusion", "ar", "text", "none", "glide", "real")


@dataclass
class EvalSet:
    """Captions to generate from and the real images to compare with (files, or scenes)."""

    captions: list[str]
    files: list[Path] = field(default_factory=list)  # COCO: the reference images
    scenes: list[shapes.Scene] = field(default_factory=list)  # Shapes: rendered instead
    counts: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def load_captions_csv(csv: str | Path, images: str | Path) -> EvalSet:
    """A table (CSV, TSV, JSONL, Parquet) with a `caption` column; the reference images are
    every image in `images`."""
    table = read_table(csv, ("caption",), what="captions file")
    captions = [t for c in table["caption"].dropna() if (t := " ".join(str(c).split()))]
    files = image_files(images)
    if not captions:
        raise UserError(f"no captions in {csv}")
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {images}")
    return EvalSet(captions, files)


def shapes_set(n: int, seed: int) -> EvalSet:
    """n seeded Shapes scenes of the training pairs (1 or 2 objects), their canonical captions."""
    scenes, _ = scene_set("fid", n, seed)
    return EvalSet([shapes.caption(s) for s in scenes], scenes=scenes)


def reference_features(
    data: EvalSet, extractor: features.Extractor, resolution: int, batch_size: int, progress: bool
) -> tuple[np.ndarray, dict]:
    """Features of the real images, with counts of images used, converted and skipped."""
    out, counts, skipped = [], Counter(), []
    if data.scenes:
        images = shapes.render_batch(data.scenes, resolution)
        return extractor(images, batch_size).numpy(), {"reference_images": len(images)}
    hint = "is --images the folder the annotations describe?"
    probe_images(data.files, MAX_BAD, hint)  # the rule training uses (data/captions.py)
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
    if too_many_bad(n_bad, len(data.files), MAX_BAD, len(data.files)) or not out:
        raise UserError(
            f"{n_bad} of {len(data.files)} reference images are missing or unreadable (first: "
            f"{', '.join(skipped[:3])}), more than {MAX_BAD:.0%}: {hint}"
        )
    if skipped:
        names = ", ".join(skipped[:5])
        print(f"warning: skipped {n_bad} unreadable images: {names}", file=sys.stderr)
    info = dict(counts) | {"reference_images": sum(len(f) for f in out), "skipped": skipped[:20]}
    return np.concatenate(out), info


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """One FID run's settings, parsed and completed once (`parse_args`)."""

    dataset: str  # "coco" (files) or "shapes"
    annotations: str | None
    captions: str | None
    images: str | None
    num_captions: int
    num_reference: int | None
    seed: int
    checkpoint: str
    methods: tuple[str, ...]
    decoder_guidance: float | None
    prior_guidance: float | None
    steps: int | None
    upsample: bool
    batch_size: int
    device: str
    features: str
    inception_weights: str | None
    resolution: int
    cache_dir: Path
    work_dir: Path
    out: Path
    command: str

    def generation(self) -> dict[str, object]:
        """What the generated images depend on, besides the weights and the captions."""
        keys = ("decoder_guidance", "prior_guidance", "steps", "resolution", "seed", "batch_size")
        return {k: getattr(self, k) for k in keys} | {"no_upsample": not self.upsample}


def parse_args(argv: list[str] | None) -> Settings:
    """The command line, checked, with the defaults that depend on the dataset filled in."""
    p = Parser(prog=COMMAND, description=__doc__.splitlines()[0])
    src = p.add_argument_group("evaluation set")
    src.add_argument("--dataset", choices=("coco", "shapes"), default="coco")
    src.add_argument("--annotations", help="COCO captions JSON (captions_val2014.json)")
    src.add_argument(
        "--captions",
        help="instead of --annotations: a CSV (TSV, JSONL, Parquet) with a caption column",
    )
    src.add_argument("--images", help="folder of the real images")
    src.add_argument("--num-captions", type=int, help="captions (default 30000 COCO, 500 Shapes)")
    src.add_argument("--num-reference", type=int, help="at most this many real images")
    src.add_argument("--seed", type=int, default=0)
    gen = p.add_argument_group("generation")
    gen.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
    gen.add_argument("--methods", nargs="+", default=["diffusion"], choices=FID_METHODS)
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
    shapes_world = args.dataset == "shapes"
    resolution = args.resolution if args.resolution is not None else 32 if shapes_world else 256
    if not shapes_world and (not args.images or not (args.annotations or args.captions)):
        p.error("--dataset coco needs --images and --annotations (or --captions)")
    num_captions = args.num_captions
    num_captions = num_captions if num_captions is not None else 500 if shapes_world else 30_000
    for flag, value in [("--num-captions", num_captions), ("--batch-size", args.batch_size)]:
        positive(value, flag)
    positive(resolution, "--resolution")
    return Settings(
        args.dataset,
        args.annotations,
        args.captions,
        args.images,
        num_captions,
        args.num_reference,
        args.seed,
        args.checkpoint,
        tuple(args.methods),
        args.decoder_guidance,
        args.prior_guidance,
        args.steps,
        # Shapes: the decoder's own 32 px, the upsamplers only when asked for more
        not (args.no_upsample or (shapes_world and resolution <= 32)),
        args.batch_size,
        args.device,
        args.features or ("shapes" if shapes_world else "inception"),
        args.inception_weights,
        resolution,
        Path(args.cache_dir),
        Path(args.work_dir),
        Path(args.out),
        " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]),
    )


# ----------------------------------------------------------------------------- generation


def _generator(model: UnCLIP, name: str, s: Settings) -> Method:
    """f(captions, scenes, seed) -> images (B, 3, R, R) in [0, 1] at the evaluation resolution."""
    fn = method_fn(model, name, s.decoder_guidance, s.prior_guidance, s.steps, s.upsample)

    def at_resolution(captions: list[str], scenes: list | None, seed: int) -> torch.Tensor:
        images = fn(captions, scenes, seed)
        R = s.resolution
        if images.shape[-1] != R:
            images = F.interpolate(images, size=(R, R), mode="bicubic", antialias=True)
        return images.clamp(0, 1)

    return at_resolution


def generated_features(
    model: UnCLIP,
    name: str,
    data: EvalSet,
    extractor: features.Extractor,
    work: Path,
    s: Settings,
    process: distributed.Process,
) -> tuple[np.ndarray, float] | None:
    """Features of one image per caption, chunk by chunk into `work` (finished chunks are
    kept: a rerun resumes); rank r does chunks r, r + world, …; rank 0 returns them all and
    the seconds spent generating them (summed over ranks and over resumed runs)."""
    from torchvision.utils import save_image

    work.mkdir(parents=True, exist_ok=True)
    captions, B, rank = data.captions, s.batch_size, process.rank
    generate = _generator(model, name, s)
    chunks = list(range(0, len(captions), B))
    mine = [i for k, i in enumerate(chunks) if k % process.world == rank]
    todo = [i for i in mine if not (work / f"chunk-{i:07d}.safetensors").is_file()]
    size = lambda i: min(B, len(captions) - i)  # noqa: E731
    bar = tqdm(
        total=sum(map(size, mine)),
        initial=sum(size(i) for i in mine if i not in todo),
        disable=None if rank == 0 else True,  # rank 0, on a terminal
        desc=f"generating ({name})",
    )
    for i in todo:
        start = time.perf_counter()
        scenes = data.scenes[i : i + B] if data.scenes else None
        images = generate(captions[i : i + B], scenes, batch_seed(s.seed, i))
        seconds = torch.tensor([time.perf_counter() - start])  # generation time, kept
        if i == 0:
            save_image(images[:16], work / "samples.png", nrow=8, padding=2)
        with atomic_path(work / f"chunk-{i:07d}.safetensors") as tmp:  # never half a chunk
            save_file({"features": extractor(images, B).contiguous(), "seconds": seconds}, tmp)
        bar.update(len(images))
    bar.close()
    if process.world > 1:
        dist.barrier()
    if rank != 0:
        return None
    loaded = [load_file(work / f"chunk-{i:07d}.safetensors") for i in chunks]
    seconds = sum(float(c["seconds"].sum()) for c in loaded)
    return torch.cat([c["features"] for c in loaded]).numpy(), seconds


# ----------------------------------------------------------------------------- main


def load_set(s: Settings) -> EvalSet:
    """The captions to generate from and the real images, sampled as `s` says."""
    if s.dataset == "shapes":
        return shapes_set(s.num_captions, s.seed)
    if s.annotations:
        coco = load_coco(s.annotations, s.images)
        data = EvalSet([c for _, c in coco.pairs], coco.files, counts=coco.counts)
    else:
        data = load_captions_csv(s.captions, s.images)
    rng = np.random.default_rng([s.seed, 43])  # sample captions (and, if asked, the images)
    n = min(s.num_captions, len(data.captions))
    if n < s.num_captions:
        print(f"note: only {n} captions available; using all of them", file=sys.stderr)
    data.captions = [data.captions[i] for i in sorted(rng.choice(len(data.captions), n, False))]
    if s.num_reference and s.num_reference < len(data.files):
        keep = sorted(rng.choice(len(data.files), s.num_reference, replace=False))
        data.files = [data.files[i] for i in keep]
    return data


def _extractor(s: Settings, model: UnCLIP, device: str) -> features.Extractor:
    try:
        if s.features == "inception":
            return features.inception(s.inception_weights, device)
        if s.features == "shapes":
            return features.shapes_features()
    except features.MissingWeights as e:
        raise UserError(str(e)) from None
    clip_id = checkpoint.identity(checkpoint.components_folder(s.checkpoint) / "clip")
    return features.clip_features(model.clip, clip_id)


def _note_unknown_words(model: UnCLIP, data: EvalSet, rank: int) -> None:
    """Count the caption words this CLIP never saw; say so once, not a warning per batch."""
    unknown = Counter(w for c in set(data.captions) for w in model.clip.unknown_words(c))
    if unknown and rank == 0:
        common = ", ".join(w for w, _ in unknown.most_common(8))
        print(f"note: {len(unknown)} caption words are unknown to this CLIP ({common}, …)")
    data.counts["unknown_caption_words"] = len(unknown)
    warnings.simplefilter("ignore", UnknownWordsWarning)


def _reference(s: Settings, data: EvalSet, extractor: features.Extractor) -> tuple[Stats, dict]:
    """The real images' statistics, cached under what they were computed from."""
    ident = (
        {"shapes": [s.num_captions, s.seed]}
        if data.scenes
        else [(str(p), *_stat(p)) for p in data.files]
    )
    key = cache_key(images=ident, features=extractor.name, resolution=s.resolution)
    compute = lambda: reference_features(data, extractor, s.resolution, s.batch_size, True)  # noqa: E731
    return cached_stats(s.cache_dir, key, compute)


def _weights(folder: Path) -> dict[str, str]:
    """The SHA-256 of each component's weights file (shipped fp16 copies differ from runs)."""
    return {
        name: checkpoint.file_sha256(checkpoint.resolve(folder / name) / checkpoint.WEIGHTS)
        for name in STAGES
        if checkpoint.exists(folder / name)
    }


def evaluate(s: Settings) -> pd.DataFrame:
    """The whole run; returns one row per method (rank 0) or an empty frame."""
    process = distributed.setup(s.device, timeout=datetime.timedelta(hours=12))
    start, rank = time.perf_counter(), process.rank
    data = load_set(s)
    device = str(process.device)
    model = load_model(s.checkpoint, device)
    require_methods(model, list(s.methods), s.checkpoint)
    if "real" in s.methods and not data.scenes:
        raise UserError("--methods real (fresh renders of the captions) needs --dataset shapes")
    extractor = _extractor(s, model, device)
    _note_unknown_words(model, data, rank)
    ref, ref_info = _reference(s, data, extractor) if rank == 0 else (None, {})
    weights = _weights(checkpoint.components_folder(s.checkpoint))
    rows = []
    for name in s.methods:
        run_id = cache_key(
            captions=data.captions,
            method=name,
            features=extractor.name,
            weights=weights,
            **s.generation(),
        )
        work = s.work_dir / f"{s.dataset}-{name}-{run_id}"
        out = generated_features(model, name, data, extractor, work, s, process)
        if rank == 0:
            fake, seconds = out
            rows.append(
                {
                    "method": name,
                    "fid": fid(ref, Stats.of(fake)),
                    "features": extractor.name,
                    "images": len(fake),
                    "captions": len(set(data.captions)),
                    "reference_images": ref.n,
                    "resolution": s.resolution,
                    "s_per_image": round(seconds / len(fake), 4),
                    "work_dir": str(work),
                }
            )
            print(f"{name}: FID {rows[-1]['fid']:.2f} ({len(fake)} images vs {ref.n} real)")
    if rank == 0:
        _report(s, pd.DataFrame(rows), data, ref_info, time.perf_counter() - start)
    if process.world > 1:
        dist.destroy_process_group()
    return pd.DataFrame(rows)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _report(
    s: Settings, table: pd.DataFrame, data: EvalSet, ref_info: dict, seconds: float
) -> None:
    name = f"fid-{s.dataset}"
    write_results(
        s.out,
        name,
        table.drop(columns=["work_dir"]),
        s.command,
        seconds,
        s.device,
        "%.3f",
        rows=table.to_dict("records"),
        annotation_counts=data.counts,
        reference=ref_info,
    )
    print(f"wrote {s.out / name}.json and .csv ({seconds / 60:.1f} min)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""

    def body() -> None:
        evaluate(parse_args(argv))

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
