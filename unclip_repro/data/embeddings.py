"""The frozen CLIP's (z_i, z_t, token states) of real image–caption pairs, computed once, cached.

The priors' data flow for real data (§2.2 of unCLIP), as `pool.py` is for the Shapes world:
a reader (`captions.open_pairs`) → the frozen CLIP → safetensors shards and a JSON index in

    CACHE/embeddings-<key>/shard-00000.safetensors   z_i, z_t (N, D) unit-norm, tokens (N, L, W)
                                                     float16, mask (N, L); L: the shard's
                                                     longest caption
    CACHE/embeddings-<key>/index.json                the CLIP's sha256, the source, the shards

where <key> hashes the CLIP's identity (its weights' sha256) and the source (its paths, and the
annotations or pairs file's own sha256). A shard is a run of `shard_size` pairs of a COCO or
pairs source, or one tar of a WebDataset source. Every file is written atomically, so an
interrupted encoding resumes: finished shards are kept. Under torchrun, rank r encodes shards
r, r + world, …; rank 0 writes the index after a barrier, and every rank then reads it all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_path, write_json
from .captions import ShardPairs, collate, open_pairs

SHARD_SIZE = 10_000  # pairs of a COCO or pairs source per cache shard


def source_key(clip_sha: str, source: dict[str, str], resolution: int) -> str:
    """16 hex digits naming the cache of `source` (open_pairs' keyword arguments) encoded by
    the CLIP whose weights have SHA-256 `clip_sha`, its images at `resolution`."""
    what: dict[str, object] = {"clip": clip_sha, "resolution": resolution}
    for flag, value in sorted(source.items()):
        paths = ("annotations", "images", "pairs", "root")
        what[flag] = str(Path(value).resolve()) if flag in paths else str(value)
        if flag in ("annotations", "pairs") and Path(value).is_file():
            with open(value, "rb") as f:
                what[f"{flag}_sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _parts(data: Dataset | ShardPairs, shard_size: int) -> list[Dataset | ShardPairs]:
    """The source cut into cache shards: runs of `shard_size` pairs, or one tar each."""
    if isinstance(data, ShardPairs):  # each rank reads its own tars: no split by node
        return [ShardPairs(url, data.resolution, data.tally.max_bad, False) for url in data.urls]
    n = len(data)
    return [Subset(data, range(i, min(i + shard_size, n))) for i in range(0, n, shard_size)]


@torch.no_grad()
def encode_pairs(
    clip: torch.nn.Module, data: Dataset | ShardPairs, batch_size: int = 256, workers: int = 0
) -> dict[str, torch.Tensor]:
    """z_i, z_t (N, D), tokens (N, L, W) float16 and mask (N, L) of the readable pairs of
    `data` (L trimmed to the longest caption)."""
    D, W = clip.embed_dim, clip.text_width
    out = {"z_i": [torch.zeros(0, D)], "z_t": [torch.zeros(0, D)], "tokens": [], "mask": []}
    loader = DataLoader(data, batch_size, num_workers=workers, collate_fn=collate)
    for pair in loader:
        if pair is None:  # every image of the batch was unreadable
            continue
        text = clip.encode_text(pair.caption)
        out["z_i"].append(clip.encode_image(pair.image).cpu())
        out["z_t"].append(text.z_t.cpu())
        out["tokens"].append(text.tokens.half().cpu())
        out["mask"].append(text.mask.cpu())
    L = max((int(m.sum(1).max()) for m in out["mask"]), default=1)
    tensors = {k: torch.cat(out[k]).contiguous() for k in ("z_i", "z_t")}
    tensors["tokens"] = torch.cat([t[:, :L] for t in out["tokens"]] or [torch.zeros(0, L, W)])
    tensors["mask"] = torch.cat([m[:, :L] for m in out["mask"]] or [torch.zeros(0, L).bool()])
    return tensors


def _read(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, or a one-line UserError naming the damaged cache file."""
    try:
        return read(path)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"damaged embedding cache file {path} ({type(e).__name__}): delete it and rerun to "
            "encode it again"
        ) from None


def load_embeddings(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every shard of a finished cache, concatenated: z_i, z_t (N, D), tokens (N, L, W) float16
    (L: the longest caption, shorter ones padded), mask (N, L)."""
    index = _read(Path(folder) / "index.json", lambda p: json.loads(p.read_text())["shards"])
    shards = [_read(Path(folder) / name, load_file) for name in index]
    L = max(s["mask"].shape[1] for s in shards)
    pool = {k: torch.cat([s[k] for s in shards]) for k in ("z_i", "z_t")}
    pool["tokens"] = torch.cat(
        [F.pad(s["tokens"], (0, 0, 0, L - s["tokens"].shape[1])) for s in shards]
    )
    pool["mask"] = torch.cat([F.pad(s["mask"], (0, L - s["mask"].shape[1])) for s in shards])
    if len(pool["z_i"]) == 0:
        raise ValueError(f"the embedding cache {folder} holds no pairs")
    return pool


def cached_embeddings(
    clip: torch.nn.Module,
    clip_sha: str,
    cache_dir: str | Path,
    source: dict[str, str],
    shard_size: int = SHARD_SIZE,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The embeddings of `source` (open_pairs' keyword arguments) by the frozen `clip` (weights'
    SHA-256 `clip_sha`): read from CACHE/embeddings-<key>/ if finished, else encoded there
    (shards already written are kept), this rank's shards only under torchrun."""
    folder = Path(cache_dir) / f"embeddings-{source_key(clip_sha, source, clip.image_size)}"
    if not (folder / "index.json").is_file():
        ranked = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if ranked else (0, 1)
        parts = _parts(open_pairs(**source, resolution=clip.image_size), shard_size)
        names = [f"shard-{k:05d}.safetensors" for k in range(len(parts))]
        mine = range(rank, len(parts), world)
        for k in tqdm(mine, desc="encoding pairs", disable=not progress, leave=False):
            if not (folder / names[k]).is_file():
                tensors = encode_pairs(clip, parts[k], batch_size, workers)
                with atomic_path(folder / names[k]) as tmp:
                    save_file(tensors, tmp)
        if ranked:
            dist.barrier()
        if rank == 0:
            rows = [len(_read(folder / n, load_file)["z_i"]) for n in names]
            index = {"clip_sha256": clip_sha, "source": source, "shards": names, "rows": rows}
            write_json(folder / "index.json", index)
        if ranked:
            dist.barrier()
    return load_embeddings(folder)
