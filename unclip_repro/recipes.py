"""What each component trains on: its *recipe*, how it draws the batch of step s (the registry
that names each component's recipe is `components.py`; the loop that runs it is `train.py`).

Two worlds feed the same recipes:
- the Shapes world, drawn fresh each step from the step's seeded generator;
- real image–caption pairs (`Source`: COCO, a table of pairs or WebDataset shards), read by
  `data/captions.py` through a DataLoader (`data/loader.py`): the decoder and GLIDE read
  images at the base resolution with their captions' token states and the image's z_i from
  the frozen CLIP (computed on the fly), the upsamplers read images at their high resolution,
  and the priors read the frozen CLIP's embeddings, encoded once into a cache beside the runs
  (`data/embeddings.py`), with batches shaped as the Shapes pool's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .ar_prior import ARPrior
from .clip import Clip
from .config import Preset
from .data import pool as shapes_pool
from .data.captions import ShardPairs, open_pairs
from .data.embeddings import cached_embeddings
from .data.loader import Stream
from .data.shapes import (
    caption,
    entails,
    parse_caption,
    render_batch,
    sample_batch,
    sample_scenes,
    scene_spec,
)
from .decoder import Decoder
from .upsampler import Upsampler

Batch = dict[str, Any]


@dataclass
class Source:
    """Real image–caption pairs: open_pairs' keyword arguments (annotations and images, pairs
    and root, or shards) and the number of DataLoader worker processes."""

    pairs: dict[str, str]
    workers: int = 0


@dataclass
class Frozen:
    """The frozen CLIP a later stage trains on, with where it came from."""

    clip: Clip
    path: Path
    sha256: str
    cache_dir: Path  # where the embedding pool or cache is kept
    progress: bool = True


@dataclass
class Images:
    """A stage's real images: the dataset, the frozen CLIP when the stage needs z_i, and the
    stream of step batches (`train._loop` opens it at the step the run starts from)."""

    dataset: Dataset | ShardPairs
    clip: Clip | None = None
    resolution: int = 0  # what the stage trains at (the dataset may be read larger, for z_i)
    stream: Stream | None = field(default=None, repr=False)

    def next(self) -> tuple[torch.Tensor, list[str], torch.Tensor] | None:
        """The next step's images (B, 3, R, R) at `resolution`, their captions and the images
        as read (B, 3, R', R'), R' ≥ R; None when none of them could be read."""
        pair = self.stream.next()
        if pair is None:
            return None
        images = pair.image
        if images.shape[-1] != self.resolution:
            size = (self.resolution, self.resolution)
            images = F.interpolate(images, size, mode="bicubic", antialias=True).clamp(0, 1)
        return images, list(pair.caption), pair.image


def clip_batch(
    preset: Preset, model: Clip, data: None, rng: np.random.Generator, batch_size: int
) -> Batch:
    """Shapes scenes with (partial) captions and which caption is true of which image."""
    if preset.data.dataset != "shapes":
        raise ValueError(f"stage 'clip' trains on the Shapes world, not {preset.data.dataset!r}")
    scenes = sample_scenes(rng, batch_size, twins=True)
    captions = [caption(s, rng, preset.data.clip_unstated) for s in scenes]
    truth, said = [scene_spec(s) for s in scenes], [parse_caption(c) for c in captions]
    positives = torch.tensor([[entails(t, s) for t in truth] for s in said])  # (B, B)
    return {
        "images": render_batch(scenes, preset.data.resolution).to(model.device),
        "text": model.tokenize(captions),
        "positives": positives.to(model.device),
    }


def pool(preset: Preset, frozen: Frozen, source: Source | None) -> dict[str, Any]:
    """The priors' embeddings: the Shapes pool, or the cache of a real source."""
    if source is not None:
        return cached_embeddings(
            frozen.clip,
            frozen.sha256,
            frozen.cache_dir,
            source.pairs,
            workers=source.workers,
            progress=frozen.progress,
        )
    return shapes_pool.cached_pool(
        frozen.clip,
        frozen.sha256,
        frozen.cache_dir,
        preset.data.pool_size,
        preset.data.resolution,
        seed=preset.data.seed,
        progress=frozen.progress,
        unstated=preset.data.unstated,
    )


def pool_batch(
    preset: Preset, module: nn.Module, data: dict, rng: np.random.Generator, batch_size: int
) -> Batch:
    """A prior's batch: caption tokens, z_t and z_i drawn from the pool or cache `data`."""
    device = next(module.parameters()).device
    return {k: v.to(device) for k, v in shapes_pool.pool_batch(data, rng, batch_size).items()}


def fit_ar(module: ARPrior, data: dict[str, Any]) -> None:
    """The AR prior's PCA and quantiser, fitted on the pool's embeddings."""
    module.fit(data["z_i"], data["z_t"])


def init_text_encoder(module: Decoder, data: Clip | Images) -> None:
    """A decoder's (or GLIDE's) own text encoder started as the frozen CLIP's text tower, when
    its settings say so (`decoder.text_init = "clip"`); from scratch otherwise."""
    if module.text_encoder is not None and module.cfg.text_init == "clip":
        module.text_encoder.load_clip(data if isinstance(data, Clip) else data.clip)


def image_data(
    preset: Preset, frozen: Frozen, source: Source | None, z_i: bool = True
) -> Clip | Images:
    """The decoder's data: the frozen CLIP (Shapes), or real images read at the larger of the
    base resolution and the CLIP's (z_i is encoded from the sharper one) with that CLIP."""
    if source is None:
        return frozen.clip
    R = preset.data.resolution
    read = max(R, frozen.clip.image_size) if z_i else R
    return Images(open_pairs(**source.pairs, resolution=read), frozen.clip, R)


@torch.no_grad()
def image_batch(
    preset: Preset, module: nn.Module, data: Clip | Images, rng: np.random.Generator, bs: int
) -> Batch | None:
    """Images with their caption's token states (or ids, for a decoder with its own text
    encoder) and their own z_i, from the frozen CLIP (zeros for the GLIDE baseline, which never
    reads z_i: one image encoding a step saved)."""
    if isinstance(data, Images):
        read = data.next()
        if read is None:
            return None
        (images, captions, sharp), clip = read, data.clip
    else:
        images, captions = sample_batch(
            rng,
            bs,
            preset.data.resolution,
            unstated=preset.data.unstated,
            two_objects=preset.data.two_objects,
        )
        clip, sharp = data, images
    images = images.to(clip.device)
    if module.text_encoder is not None:  # the decoder reads the caption itself: its ids
        tokens = clip.tokenize(captions)
        mask = tokens != 0
    else:
        text = clip.encode_text(captions)
        tokens, mask = text.tokens, text.mask
    return {
        "images": images,
        "tokens": tokens,
        "mask": mask,
        "z_i": clip.encode_image(sharp)
        if module.cfg.image_embedding
        else images.new_zeros(len(images), clip.cfg.embed_dim),
    }


def upsampler_data(
    preset: Preset, frozen: Frozen | None, source: Source | None, config: str
) -> Images | None:
    """An upsampler's data (its settings: `preset.<config>`): None (Shapes renders), or real
    images at its high resolution."""
    if source is None:
        return None
    high = getattr(preset, config).high
    return Images(open_pairs(**source.pairs, resolution=high), None, high)


def upsampler_batch(
    preset: Preset, module: Upsampler, data: Images | None, rng: np.random.Generator, bs: int
) -> Batch | None:
    """High-resolution images, their corrupted low-resolution versions and crop corners."""
    cfg = module.cfg
    if data is None:
        images, _ = sample_batch(rng, bs, cfg.high)  # (B, 3, H, H)
    else:
        read = data.next()
        if read is None:
            return None
        images = read[0]
    low = F.interpolate(images, size=(cfg.low, cfg.low), mode="area")  # exact box filter
    corner = rng.integers(0, cfg.high - cfg.crop + 1, size=(2, len(images)))
    device = next(module.parameters()).device
    return {
        "images": images.to(device),
        "low": module.corrupt(low, rng).to(device),
        "top": torch.from_numpy(corner[0]),
        "left": torch.from_numpy(corner[1]),
    }
