"""Frozen-CLIP embeddings of a seeded pool of Shapes scenes, cached on disk.

The priors' data flow (§2.2 of unCLIP): images + captions → frozen CLIP → cached (z_i, z_t,
token states) → each prior trains on these pairs. Encoding is the expensive part (a CLIP
forward per image), so a pool is encoded once and saved beside the runs, keyed by the CLIP
weights' hash, the resolution, the size and the seed; both priors reuse the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..files import atomic_path, write_json
from . import shapes


@torch.no_grad()
def encode_pool(
    clip: torch.nn.Module,
    size: int,
    resolution: int,
    seed: int = 0,
    split: str = "train",
    batch_size: int = 256,
    progress: bool = True,
    unstated: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Encode `size` seeded scenes of `split` (one paraphrased caption each, leaving each
    attribute unstated with probability `unstated`) with a frozen CLIP.

    Returns z_i (N, D) and z_t (N, D) unit-norm, tokens (N, L, W) float16 token states
    (L trimmed to the longest caption), mask (N, L) and canonical caption ids `spec` (N,)
    (scenes with equal canonical captions share an id; `captions` in `spec_captions`).
    """
    rng = np.random.default_rng([seed, 7])
    out: dict[str, list[torch.Tensor]] = {"z_i": [], "z_t": [], "tokens": [], "mask": []}
    canonical: list[str] = []
    bar = tqdm(total=size, desc="encoding pool", disable=not progress, leave=False)
    for start in range(0, size, batch_size):
        scenes = [
            shapes.random_scene(rng, split=split) for _ in range(min(batch_size, size - start))
        ]
        images = shapes.render_batch(scenes, resolution)
        enc = clip.encode_text([shapes.caption(s, rng, unstated) for s in scenes])
        out["z_i"].append(clip.encode_image(images).cpu())
        out["z_t"].append(enc.z_t.cpu())
        out["tokens"].append(enc.tokens.half().cpu())
        out["mask"].append(enc.mask.cpu())
        canonical += [shapes.caption(s) for s in scenes]
        bar.update(len(scenes))
    bar.close()
    pool = {k: torch.cat(v) for k, v in out.items()}
    length = int(pool["mask"].sum(1).max())  # the longest caption, in tokens
    pool["tokens"] = pool["tokens"][:, :length].contiguous()
    pool["mask"] = pool["mask"][:, :length].contiguous()
    names = sorted(set(canonical))
    index = {c: i for i, c in enumerate(names)}
    pool["spec"] = torch.tensor([index[c] for c in canonical])
    pool["spec_captions"] = names  # type: ignore[assignment]
    return pool


def cached_pool(
    clip: torch.nn.Module,
    clip_sha: str,
    cache_dir: str | Path,
    size: int,
    resolution: int,
    seed: int = 0,
    progress: bool = True,
    unstated: float = 0.0,
) -> dict[str, torch.Tensor]:
    """`encode_pool`, read from `cache_dir` if encoded before by the same CLIP, else written."""
    vague = f"-unstated{unstated:g}" if unstated > 0 else ""
    name = f"pool-{clip_sha[:12]}-{resolution}px-{size}-{seed}{vague}.safetensors"
    file = Path(cache_dir) / name
    if file.is_file():
        try:
            tensors = load_file(file)
            captions = json.loads(file.with_suffix(".json").read_text())
            return {**tensors, "spec_captions": captions}
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    pool = encode_pool(clip, size, resolution, seed, progress=progress, unstated=unstated)
    write_json(file.with_suffix(".json"), pool["spec_captions"])  # first: the tensors mark done
    with atomic_path(file) as tmp:
        save_file({k: v for k, v in pool.items() if isinstance(v, torch.Tensor)}, tmp)
    return pool


def pool_batch(pool: dict[str, torch.Tensor], rng: np.random.Generator, batch_size: int) -> dict:
    """A random batch of rows: tokens (B, L, W) float32, mask (B, L), z_t (B, D), z_i (B, D)."""
    idx = torch.from_numpy(rng.integers(len(pool["z_i"]), size=batch_size))
    return {
        "tokens": pool["tokens"][idx].float(),
        "mask": pool["mask"][idx],
        "z_t": pool["z_t"][idx],
        "z_i": pool["z_i"][idx],
    }
