"""The one list of unCLIP's components: how each is built from a preset, loaded and shipped.

    clip             the frozen joint embedding space (§2)
    prior-diffusion  P(z_i | y) by diffusion (§2.2)          generate(prior="diffusion")
    prior-ar         P(z_i | y) autoregressively (§2.2)      generate(prior="ar")
    decoder          P(x | z_i, y) at the base resolution (§2.1)
    glide            the GLIDE baseline: the same decoder on the caption only (§5)
    upsampler1/2     the two diffusion upsamplers (§2.1)

A component's name is its folder in a run or checkpoint folder, its `--stage` in training
and its key in the preset's training settings. Everything but the CLIP and the upsamplers is
trained on a frozen CLIP's embeddings, and is loaded only beside that CLIP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .ar_prior import ARPrior
from .clip import Clip
from .config import Preset, preset_from_dict
from .decoder import Decoder
from .prior import DiffusionPrior
from .upsampler import Upsampler


@dataclass(frozen=True)
class Component:
    """How to build one component from a preset, and whether it reads a frozen CLIP."""

    build: Callable[[Preset], nn.Module]
    on_clip: bool  # trained on (and only valid beside) a frozen CLIP


def _glide(p: Preset) -> Decoder:
    decoder = dataclasses.replace(p.decoder, image_embedding=False)
    return Decoder.from_clip_config(decoder, p.clip, p.data.resolution)


COMPONENTS: dict[str, Component] = {
    # a pretrained CLIP's weights come from its run folder (`train.import_clip` put them there)
    "clip": Component(lambda p: Clip(p.clip, pretrained_weights=False), on_clip=False),
    "prior-diffusion": Component(
        lambda p: DiffusionPrior.from_clip_config(p.prior_diffusion, p.clip), on_clip=True
    ),
    "prior-ar": Component(lambda p: ARPrior.from_clip_config(p.prior_ar, p.clip), on_clip=True),
    "decoder": Component(
        lambda p: Decoder.from_clip_config(p.decoder, p.clip, p.data.resolution), on_clip=True
    ),
    "glide": Component(_glide, on_clip=True),
    "upsampler1": Component(lambda p: Upsampler(p.upsampler1), on_clip=False),
    "upsampler2": Component(lambda p: Upsampler(p.upsampler2), on_clip=False),
}

PRIORS = {"diffusion": "prior-diffusion", "ar": "prior-ar"}  # generate(prior=...) -> component


def component_of(path: str | Path) -> str:
    """The name of the component in checkpoint folder `path`; CheckpointError if none."""
    config = checkpoint.load_config(path)
    name = config.get("component")
    if name not in COMPONENTS or "preset" not in config:
        raise checkpoint.CheckpointError(f"{checkpoint.resolve(path)} is not a known component")
    return name


def load_preset(path: str | Path) -> Preset:
    """The preset a component was trained with (its CLIP, resolution, settings)."""
    component_of(path)
    return preset_from_dict(checkpoint.load_config(path)["preset"])


def load_component(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained component (EMA weights) from its checkpoint folder, in eval mode."""
    module = COMPONENTS[component_of(path)].build(load_preset(path))
    checkpoint.load_into(module, path)
    return module.to(device).eval()


def export_component(run: str | Path, dest: str | Path) -> Path:
    """Ship a trained component: float16 parameters, float32 buffers, config, no train state."""
    module = load_component(run)
    return checkpoint.export(run, dest, half={name for name, _ in module.named_parameters()})
