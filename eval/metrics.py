"""The numbers of the harness, from maintained libraries: FID (clean-fid's Fréchet distance),
precision / recall / density / coverage (prdc, Naeem et al. 2020), and diversity (mean
pairwise feature distance between samples of one caption). Reference statistics are cached
on disk, keyed by what they were computed from, so reruns do not recompute them. Also the
plumbing every harness command shares: the methods it compares (`METHODS`, `method`), seeded
scene sets (`scene_set`), batched generation (`generate`), loading a model, the report's
machine line and its files (one-line errors and atomic writes come from `unclip_repro.cli`
and `unclip_repro.files`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from unclip_repro import checkpoint
from unclip_repro.cli import Parser, UserError
from unclip_repro.components import STAGES
from unclip_repro.config import coerce
from unclip_repro.data import shapes
from unclip_repro.files import atomic_path, write_json, write_text
from unclip_repro.pipeline import UnCLIP

# What the harness compares, by the name its flags use -> the label its reports use.
METHODS = {
    "diffusion": "unCLIP, diffusion prior",
    "ar": "unCLIP, AR prior",
    "text": "unCLIP, text embedding as z_i",
    "none": "unCLIP, caption only (no z_i)",
    "glide": "GLIDE baseline",
    "true": "decoder, true z_i (ceiling)",
    "reconstruction": "reconstruction (image → z_i → decoder)",
    "real": "real renders",
}
# Each harness draws its scenes from its own stream: [seed, salt, objects, split].
SALTS = {
    "clip": 21,
    "clip-figure": 23,
    "priors": 11,
    "priors-figure": 13,
    "fid": 41,
    "sweep": 51,
    "binding": 61,
    "oracle": 71,
    "manipulations": 81,
    "probe": 81,
    "probe-test": 83,
}
Method = Callable[[list[str], "list[shapes.Scene] | None", int], torch.Tensor]


def load_model(path: str | Path, device: str | torch.device = "cpu"):  # noqa: ANN201
    """`UnCLIP.load(path)`, with a missing or mismatched checkpoint as a UserError."""
    try:
        return UnCLIP.load(path, device=device)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise UserError(str(e)) from None


def _missing(model: UnCLIP, name: str) -> str | None:
    """What the model lacks to run method `name`: a GLIDE baseline for "glide", the prior of
    that name for "diffusion" / "ar" (the rest need only the decoder); None if nothing."""
    if name == "glide" and model.glide is None:
        return "GLIDE baseline (glide/)"
    if name in ("diffusion", "ar") and name not in model.priors:
        return f"{name} prior"
    return None


def require_methods(model: UnCLIP, methods: list[str], where: str) -> None:
    """UserError unless the model has what each method needs (`_missing`)."""
    for name in methods:
        if (lacks := _missing(model, name)) is not None:
            raise UserError(f"{where} has no {lacks}")


def available(model: UnCLIP, methods: list[str]) -> list[str]:
    """The methods of `methods` this model can run (its priors, GLIDE if it has one)."""
    return [m for m in methods if _missing(model, m) is None]


def method_fn(
    model: UnCLIP,
    name: str,
    decoder_guidance: float | None = None,
    prior_guidance: float | None = None,
    steps: int | None = None,
    upsample: bool = False,
) -> Method:
    """f(captions, scenes, seed) -> images (B, 3, R, R) in [0, 1] of method `name` (METHODS).
    `scenes` (the captions' scenes) are read by "true", "reconstruction" and "real" only."""
    R = model.decoder.resolution
    if name == "glide":
        return lambda c, s, seed: model.generate_glide(
            c, seed, guidance=decoder_guidance, steps=steps, upsample=upsample
        )
    if name in model.priors:
        return lambda c, s, seed: model.generate(
            c, seed, name, decoder_guidance, prior_guidance, steps, upsample
        )

    def true_z(captions: list[str], scenes: list[shapes.Scene], seed: int) -> torch.Tensor:
        z_i = model.clip.encode_image(shapes.render_batch(scenes, R))
        text = model.encode_text(captions) if name == "true" else None
        generator = torch.Generator().manual_seed(seed)
        return model.decoder.sample(
            text, z_i, guidance=decoder_guidance, steps=steps, generator=generator
        )

    def real(captions: list[str], scenes: list[shapes.Scene], seed: int) -> torch.Tensor:
        rng = np.random.default_rng(seed)  # new residual detail, the same caption
        return shapes.render_batch([shapes.redraw(s, rng) for s in scenes], R)

    if name in ("true", "reconstruction"):
        return true_z
    if name == "real":
        return real
    raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")


SAMPLING_KEYS = sorted({f"{s.config}.{f}" for s in STAGES.values() for f in s.sampling})


def set_sampling(
    model: UnCLIP | Mapping[str, torch.nn.Module | None], changes: Mapping[str, object]
) -> None:
    """Change how the components of `model` (an UnCLIP, or components by stage name) draw, in
    place: `changes` maps a dotted preset key of a sampling setting (`Stage.sampling`:
    `decoder.guidance`, `decoder.eta`, `decoder.sample_steps` (the decoder and GLIDE),
    `prior_diffusion.candidates`, `upsampler1.sample_steps`, ...) to its value; UserError for
    any other key, a setting the weights depend on (train with it: `unclip_repro train --set`)."""
    modules = model
    if isinstance(model, UnCLIP):
        modules = {
            "decoder": model.decoder,
            "glide": model.glide,
            "prior-diffusion": model.priors.get("diffusion"),
            "prior-ar": model.priors.get("ar"),
            **{f"upsampler{i}": up for i, up in enumerate(model.upsamplers, start=1)},
        }
    for key, value in changes.items():
        if key not in SAMPLING_KEYS:
            raise UserError(
                f"{key!r} is not a sampling setting; these are: {', '.join(SAMPLING_KEYS)}"
            )
        config, field = key.split(".")
        for name, stage in STAGES.items():
            module = modules.get(name)
            if stage.config != config or module is None:
                continue
            value = coerce(key, value, getattr(module.cfg, field))  # as `--set` takes it
            module.cfg = dataclasses.replace(module.cfg, **{field: value})


def batch_seed(seed: int, i: int) -> int:
    """The seed of the batch starting at caption i of a run seeded `seed`."""
    return seed * 1_000_003 + i


def generate(
    fn: Method,
    captions: list[str],
    scenes: list[shapes.Scene] | None,
    seed: int,
    batch_size: int,
    bar: tqdm | None = None,
) -> torch.Tensor:
    """fn over the captions in batches (batch i seeded `batch_seed(seed, i)`), concatenated."""
    out = []
    for i in range(0, len(captions), batch_size):
        chunk = slice(i, i + batch_size)
        out.append(
            fn(captions[chunk], None if scenes is None else scenes[chunk], batch_seed(seed, i))
        )
        if bar is not None:
            bar.update(len(out[-1]))
    return torch.cat(out)


def scene_set(
    purpose: str,
    n: int,
    seed: int = 0,
    n_objects: int | None = None,
    split: str = "train",
    distinct_colours: bool = False,
) -> tuple[list[shapes.Scene], np.random.Generator]:
    """n seeded scenes for `purpose` (a key of SALTS, or a caption set of eval.generation),
    and the generator they came from, for further draws (redraws of the same captions)."""
    salt = SALTS.get(purpose, 0)
    rng = np.random.default_rng([seed, salt, n_objects or 0, shapes.SPLITS.index(split)])
    scenes: list[shapes.Scene] = []
    while len(scenes) < n:
        scene = shapes.random_scene(rng, n_objects, split)
        if not distinct_colours or len({o.colour for o in scene.objects}) == len(scene.objects):
            scenes.append(scene)
    return scenes, rng


def harness_parser(
    prog: str, doc: str, num_captions: int, what: str = "captions per set", batch_size: int = 50
) -> Parser:
    """The parser every harness command starts from: --checkpoint, --num-captions, --seed,
    --batch-size, --out (default `results`); the command adds its own flags."""
    p = Parser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
    p.add_argument("--num-captions", type=int, default=num_captions, help=what)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--out", default="results", help="folder for the report")
    return p


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:  # noqa: ANN001
    """Lay out, save (atomically, creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def machine(device: str | torch.device = "cpu") -> str:
    """What a timing was measured on, for the reports."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )


def write_results(
    out: str | Path,
    name: str,
    table: pd.DataFrame,
    command: str,
    seconds: float,
    device: str | torch.device = "cpu",
    float_format: str = "%.4f",
    **extra: object,
) -> None:
    """A command's results: `{out}/{name}.csv` (the table) and `{name}.json` (the command,
    wall time, machine and `extra`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.csv", table.to_csv(index=False, float_format=float_format))
    report = {"command": command, "wall_s": round(seconds, 1), "machine": machine(device)}
    write_json(out / f"{name}.json", report | extra)


@dataclass
class Stats:
    """Mean (d,) and covariance (d, d) of n feature vectors: what FID compares."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray) -> Stats:
        f = np.asarray(features, dtype=np.float64)
        if len(f) < 2:
            raise UserError(f"FID needs at least 2 images, got {len(f)}")
        return cls(f.mean(0), np.cov(f, rowvar=False), len(f))


def fid(a: Stats, b: Stats) -> float:
    """The Fréchet distance between two feature Gaussians (clean-fid's implementation)."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of fake features against real ones (prdc,
    k-nearest-neighbour manifolds; k is capped below the smaller set's size)."""
    import prdc

    k = max(1, min(k, len(real) - 2, len(fake) - 2))  # the k-th neighbour besides itself
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        scores = prdc.compute_prdc(np.asarray(real), np.asarray(fake), nearest_k=k)
    return {name: float(value) for name, value in scores.items()}


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise L2 distance between the samples of each caption, averaged over captions:
    features (C, S, d) for C captions of S samples each."""
    C, S, _ = features.shape
    if S < 2:
        raise UserError("diversity needs at least 2 samples per caption")
    dist = torch.cdist(features.float(), features.float())  # (C, S, S)
    return float(dist.sum((1, 2)).mean() / (S * (S - 1)))


def psnr(images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per image, 10 log10(1 / MSE) in dB (images (B, 3, R, R) in [0, 1]; an exact copy: 100)."""
    return -10 * torch.log10((images - truth).pow(2).flatten(1).mean(1).clamp_min(1e-10))


def identities(path: str | Path) -> dict[str, str]:
    """The identity (weights' SHA-256) of each component in a components folder (or the
    shipped preset `path` names): what a cache of its results is keyed by."""
    folder = checkpoint.components_folder(path)
    return {d.name: checkpoint.identity(d) for d in folder.iterdir() if checkpoint.exists(d)}


def cache_key(**parts: object) -> str:
    """A short stable hash of JSON-able parts (the image set, the extractor, the resolution)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_stats(
    cache_dir: str | Path, key: str, compute: Callable[[], tuple[np.ndarray, dict]]
) -> tuple[Stats, dict]:
    """Reference statistics under `key` in `cache_dir`, or `compute()` → (features, info)
    saved there atomically. `info` (counts of images used and skipped) is kept beside them."""
    path = Path(cache_dir) / f"ref-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                info = json.loads(str(z["info"]))
                return Stats(z["mu"], z["sigma"], int(z["n"])), info | {"cached": True}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is recomputed, never trusted
    features, info = compute()
    stats = Stats.of(features)
    with atomic_path(path) as tmp:
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=stats.n, info=json.dumps(info))
    return stats, info | {"cached": False}
