"""The peers bench/speed.py measures us against, built to our sizes (imported lazily: a peer
that is not installed gives None and a reason, never an error).

- diffusers' `UNet2DConditionModel` as our U-Net: GLIDE-style attention, i.e. diffusers'
  "SimpleCrossAttn" blocks (self-attention whose keys and values get the context's projected
  ones concatenated: GLIDE's `encoder_kv`, diffusers' `AttnAddedKVProcessor`, the block type
  of diffusers' own unCLIP/Karlo decoder), scale-shift norm, the extra embedding added to the
  timestep's (`class_embed_type="identity"`). Those blocks resample with a ResNet block;
  ours with one convolution, so the bench puts diffusers' own `Downsample2D`/`Upsample2D`
  (3×3 convolution) there: then the two have the same layers and the same parameter count.
- diffusers' `PriorTransformer` and DALLE2-pytorch's `DiffusionPriorNetwork` as our
  diffusion prior: the same sequence [caption tokens, z_t, timestep, x_t, query] at equal
  width, depth and heads.
"""

from __future__ import annotations

import contextlib
import io
from importlib import metadata

import torch
from torch import Tensor, nn

from unclip_repro.unet import UNetConfig


def version(dist: str) -> str | None:
    """The installed version of distribution `dist`, None if it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class _WithoutTemb(nn.Module):
    """Calls a resampler that takes no timestep embedding where a ResNet resampler got one."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, h: Tensor, temb: Tensor | None = None) -> Tensor:
        """h (B, C, H, W) -> resampled."""
        return self.inner(h)


def diffusers_unet(cfg: UNetConfig, resolution: int) -> nn.Module:
    """diffusers' UNet2DConditionModel with our U-Net's layers (see the module docstring).

    Mapping: block_out_channels = channels × channel_mult; layers_per_block = num_res_blocks;
    a level with attention (its feature size in attention_resolutions) is a SimpleCrossAttn
    block, the others Down/UpBlock2D; attention_head_dim = head_channels (per-head width, as
    ours); cross_attention_dim = context_dim; norm_num_groups = groups; in_channels +2 when
    ours adds coordinate channels (the bench feeds them precomputed)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    widths = tuple(cfg.channels * m for m in cfg.channel_mult)
    attn = [resolution // 2**i in cfg.attention_resolutions for i in range(len(widths))]
    down = tuple("SimpleCrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("SimpleCrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    if min(cfg.groups, cfg.channels) != cfg.groups:
        raise ValueError("diffusers' GroupNorm takes one group count for every width")
    model = UNet2DConditionModel(
        sample_size=resolution,
        in_channels=cfg.in_channels + 2 * cfg.coords,
        out_channels=cfg.out_channels,
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        layers_per_block=cfg.num_res_blocks,
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.head_channels,
        norm_num_groups=cfg.groups,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
        flip_sin_to_cos=False,
        freq_shift=0,
    )
    for block in model.down_blocks:
        if block.downsamplers is not None and type(block).__name__.startswith("Simple"):
            ch = block.resnets[-1].out_channels
            conv = Downsample2D(ch, use_conv=True, padding=1)
            block.downsamplers = nn.ModuleList([_WithoutTemb(conv)])
    for block in model.up_blocks:
        if block.upsamplers is not None and type(block).__name__.startswith("Simple"):
            ch = block.resnets[-1].out_channels
            block.upsamplers = nn.ModuleList([_WithoutTemb(Upsample2D(ch, use_conv=True))])
    return model


def diffusers_unet_call(model: nn.Module):  # noqa: ANN201
    """f(x, t, emb, context) -> prediction, with our U-Net's argument order."""

    def call(x: Tensor, t: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        return model(x, t, encoder_hidden_states=context, class_labels=emb).sample

    return call


def diffusers_prior(width: int, layers: int, heads: int, tokens: int) -> nn.Module:
    """diffusers' PriorTransformer: `heads` × width/heads, `layers` blocks, embeddings of the
    same width (its caption tokens must be as wide as the embedding)."""
    from diffusers import PriorTransformer

    return PriorTransformer(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        num_layers=layers,
        embedding_dim=width,
        num_embeddings=tokens,
        additional_embeddings=4,
    )


def diffusers_prior_call(model: nn.Module):  # noqa: ANN201
    """f(x_t, t, tokens, mask, z_t) -> predicted embedding (B, width)."""

    def call(x_t: Tensor, t: Tensor, tokens: Tensor, mask: Tensor, z_t: Tensor) -> Tensor:
        out = model(x_t, t, proj_embedding=z_t, encoder_hidden_states=tokens, attention_mask=mask)
        return out.predicted_image_embedding

    return call


def dalle2_prior(width: int, layers: int, heads: int, tokens: int) -> nn.Module:
    """DALLE2-pytorch's DiffusionPriorNetwork at `width` (its embeddings and caption tokens
    are that wide too), `layers`, `heads` × width/heads, learned timestep table of 1000."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints on import
        from dalle2_pytorch import DiffusionPriorNetwork

    return DiffusionPriorNetwork(
        dim=width,
        depth=layers,
        heads=heads,
        dim_head=width // heads,
        num_timesteps=1000,
        max_text_len=tokens,
    )


def dalle2_prior_call(model: nn.Module):  # noqa: ANN201
    """f(x_t, t, tokens, mask, z_t) -> predicted embedding (B, width) (it reads padding from
    all-zero tokens, so `mask` is unused)."""

    def call(x_t: Tensor, t: Tensor, tokens: Tensor, mask: Tensor, z_t: Tensor) -> Tensor:
        return model(x_t, t, text_embed=z_t, text_encodings=tokens)

    return call


PEERS = {  # name -> (distribution, builder of the U-Net or prior)
    "diffusers": "diffusers",
    "dalle2-pytorch": "dalle2-pytorch",
}


def available(name: str) -> tuple[bool, str]:
    """(importable, version or the reason why not) for the peer `name`."""
    dist = PEERS[name]
    v = version(dist)
    if v is None:
        return False, "not installed"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            __import__(dist.replace("-", "_"))
    except Exception as e:  # noqa: BLE001 — a broken peer is reported, not raised
        return False, f"not importable ({type(e).__name__}: {str(e)[:80]})"
    return True, v


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def coords(x: Tensor) -> Tensor:
    """x (B, C, H, W) with the two coordinate channels our U-Net adds (`UNetConfig.coords`)."""
    B, _, H, W = x.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    return torch.cat([x, torch.stack([xs, ys]).expand(B, 2, H, W)], dim=1)
