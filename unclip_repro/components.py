"""The one registry of unCLIP's components: a `Stage` holds everything one component is.

    clip             the frozen joint embedding space (§2)
    prior-diffusion  P(z_i | y) by diffusion (§2.2)          generate(prior="diffusion")
    prior-ar         P(z_i | y) autoregressively (§2.2)      generate(prior="ar")
    decoder          P(x | z_i, y) at the base resolution (§2.1)
    glide            the GLIDE baseline: the same decoder on the caption only (§5)
    upsampler1/2     the two diffusion upsamplers (§2.1)

A component's name is its folder in a run or checkpoint folder, its `--stage` in training
and its key in the preset's training settings. Adding a component is one `Stage` in `STAGES`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint, recipes
from .ar_prior import ARPrior
from .clip import Clip
from .config import Preset, preset_from_dict
from .decoder import Decoder
from .prior import DiffusionPrior
from .recipes import Batch
from .unet import AttentionBlock, ResBlock
from .upsampler import Upsampler

UNET_BLOCKS = (ResBlock, AttentionBlock)
TRANSFORMER_BLOCKS = (nn.TransformerEncoderLayer,)


@dataclass(frozen=True)
class Stage:
    """One component: how it is built, what it trains on, and what a run of it may change.

    `config` names the preset field of its model settings; `sampling` the fields there that
    only say how a trained model draws (a resume may change them). `data(preset, frozen,
    source)` runs once per run (e.g. encodes the embedding pool), `batch(preset, module, data,
    rng, batch_size)` draws the batch of a step (None: no image of it could be read, the step
    is skipped), `fit(module, data)` sets statistics a fresh model needs (the AR prior's PCA).
    """

    name: str
    config: str
    build: Callable[[Preset], nn.Module]
    batch: Callable[[Preset, nn.Module, Any, np.random.Generator, int], Batch | None]
    data: Callable[[Preset, Any, Any], Any] | None = None
    fit: Callable[[nn.Module, Any], None] | None = None
    on_clip: bool = True  # trained on (and only valid beside) a frozen CLIP
    starts_from: tuple[str, ...] = ()  # other components `--init` may start it from
    sharded: tuple[type[nn.Module], ...] = ()  # the blocks FSDP shards one by one
    sampling: tuple[str, ...] = ()
    prior: str | None = None  # its name in generate(prior=...)

    def settings(self, preset: Preset) -> Any:
        """This component's model settings in `preset`."""
        return getattr(preset, self.config)


def _glide(p: Preset) -> Decoder:
    decoder = dataclasses.replace(p.decoder, image_embedding=False)
    return Decoder.from_clip_config(decoder, p.clip, p.data.resolution)


def _upsampler(name: str) -> Stage:
    return Stage(
        name,
        config=name,
        build=lambda p: Upsampler(getattr(p, name)),
        batch=recipes.upsampler_batch,
        data=functools.partial(recipes.upsampler_data, config=name),
        on_clip=False,
        sharded=UNET_BLOCKS,
        sampling=("sample_steps",),
    )


_DECODER = {"batch": recipes.image_batch, "sharded": UNET_BLOCKS + TRANSFORMER_BLOCKS}
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        # a pretrained CLIP's weights come from its run folder (`train.import_clip` put them there)
        Stage(
            "clip",
            config="clip",
            build=lambda p: Clip(p.clip, pretrained_weights=False),
            batch=recipes.clip_batch,
            on_clip=False,
        ),
        Stage(
            "prior-diffusion",
            config="prior_diffusion",
            build=lambda p: DiffusionPrior.from_clip_config(p.prior_diffusion, p.clip),
            batch=recipes.pool_batch,
            data=recipes.pool,
            sharded=TRANSFORMER_BLOCKS,
            sampling=("sample_steps", "eta", "guidance", "candidates"),
            prior="diffusion",
        ),
        Stage(
            "prior-ar",
            config="prior_ar",
            build=lambda p: ARPrior.from_clip_config(p.prior_ar, p.clip),
            batch=recipes.pool_batch,
            data=recipes.pool,
            fit=recipes.fit_ar,
            sharded=TRANSFORMER_BLOCKS,
            sampling=("temperature", "top_k", "guidance"),
            prior="ar",
        ),
        Stage(
            "decoder",
            config="decoder",
            build=lambda p: Decoder.from_clip_config(p.decoder, p.clip, p.data.resolution),
            data=recipes.image_data,
            fit=recipes.init_text_encoder,
            starts_from=("glide",),
            sampling=("sample_steps", "eta", "guidance"),
            **_DECODER,
        ),
        # the same batches, z_i never read (so real images are read at the base resolution only)
        Stage(
            "glide",
            config="decoder",
            build=_glide,
            data=functools.partial(recipes.image_data, z_i=False),
            fit=recipes.init_text_encoder,
            sampling=("sample_steps", "eta", "guidance"),
            **_DECODER,
        ),
        _upsampler("upsampler1"),
        _upsampler("upsampler2"),
    )
}

PRIORS = {s.prior: s.name for s in STAGES.values() if s.prior}  # generate(prior=...) -> stage


def component_of(path: str | Path) -> str:
    """The name of the component in checkpoint folder `path`; CheckpointError if none."""
    config = checkpoint.load_config(path)
    name = config.get("component")
    if name not in STAGES or "preset" not in config:
        raise checkpoint.CheckpointError(f"{checkpoint.resolve(path)} is not a known component")
    return name


def load_preset(path: str | Path) -> Preset:
    """The preset a component was trained with (its CLIP, resolution, settings)."""
    component_of(path)
    return preset_from_dict(checkpoint.load_config(path)["preset"])


def load_component(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained component (EMA weights) from its checkpoint folder, in eval mode."""
    module = STAGES[component_of(path)].build(load_preset(path))
    checkpoint.load_into(module, path)
    return module.to(device).eval()


def export_component(run: str | Path, dest: str | Path) -> Path:
    """Ship a trained component: float16 parameters, float32 buffers, config, no train state."""
    module = load_component(run)
    return checkpoint.export(run, dest, half={name for name, _ in module.named_parameters()})
