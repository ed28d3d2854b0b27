"""The ADM / GLIDE U-Net shared by the decoder and the upsamplers (§2.1 of unCLIP).

Dhariwal & Nichol 2021 ("ADM", §3) and Nichol et al. 2021 ("GLIDE", §2.3): residual blocks
whose normalisation is modulated by an embedding (timestep, plus z_i for the decoder:
"scale-shift norm"), self-attention at chosen resolutions, and — for text conditioning — a
context sequence whose keys and values are concatenated to each attention layer's own
(GLIDE's `encoder_kv`). unCLIP's decoder feeds that context with the caption's token states
and four tokens projected from z_i (§2.1). The upsamplers use the same class with no
attention and no context, and the low-resolution image concatenated to the input channels.

Shapes: x (B, C, H, W), t (B,), emb (B, E), context (B, N, context_dim), context_mask (B, N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusion import timestep_embedding


@dataclass
class UNetConfig:
    """Size of a U-Net (Table 3 of unCLIP for the paper's: channels, depth, multipliers, ...)."""

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 64  # base channel count
    channel_mult: tuple[int, ...] = (1, 2, 2)  # per resolution level
    num_res_blocks: int = 2  # "depth" per level
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes with attention
    head_channels: int = 32
    dropout: float = 0.0
    context_dim: int | None = None  # width of the context tokens; None: no context
    groups: int = 16  # GroupNorm groups
    # two input channels holding each pixel's (x, y) in [−1, 1] ("CoordConv", Liu et al. 2018):
    # where an object stands is a caption attribute in the Shapes world, and a small U-Net
    # otherwise has to infer it from the zero padding (not in the paper)
    coords: bool = False


# channels-last feature maps: the convolutions' fast layout on the CPU (oneDNN) and on tensor
# cores, and the attention's position-major tokens come without a copy (bench/speed.py times
# torch.contiguous_format against it)
MEMORY_FORMAT = torch.channels_last


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch, so each block starts as identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, the embedding as scale and shift of the second norm (ADM §3)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, 1, 1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout))
        self.out_norm = _norm(cout, groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(cout, cout, 3, 1, 1))
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, cin, H, W), emb (B, E) -> (B, cout, H, W)."""
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[..., None, None].chunk(2, dim=1)  # (B, cout, 1, 1) each
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, with optional context keys/values
    concatenated to the image's own (GLIDE's text conditioning, §2.3 of GLIDE).

    q, k and v are projected from position-major tokens (B, HW, C), so each head's channels lie
    contiguous in memory: the layout PyTorch's fused attention kernels take (flash on the CPU,
    flash or memory-efficient on CUDA). Channel-major (B, C, HW) projections would leave them
    strided, and `scaled_dot_product_attention` would fall back to its unfused math kernel.
    The projections keep their 1×1-convolution weights, so checkpoints load unchanged.
    """

    def __init__(self, channels: int, head_channels: int, context_dim: int | None, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def _split(self, x: Tensor, parts: int) -> Tensor:
        """(B, N, parts·C) -> (parts, B, heads, N, d), d contiguous (a view, no copy)."""
        B, N, _ = x.shape
        return x.view(B, N, parts, self.heads, -1).permute(2, 0, 3, 1, 4)

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, C, H, W), context (B, N, context_dim), context_mask (B, N) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias)  # (B, HW, 3C)
        q, k, v = self._split(qkv, 3)  # (B, heads, HW, d) each
        mask = None
        if self.context_kv is not None and context is not None:
            ck, cv = self._split(self.context_kv(context), 2)  # (B, heads, N, d) each
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)  # context first
            if context_mask is not None:
                own = context_mask.new_ones(B, H * W)
                mask = torch.cat([context_mask.bool(), own], dim=1)[:, None, None]  # (B,1,1,N+HW)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, HW, d)
        out = out.transpose(1, 2).reshape(B, H * W, C)  # (B, HW, C)
        out = F.linear(out, self.proj.weight[..., 0], self.proj.bias)  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Strided 3×3 convolution: H, W -> H/2, W/2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """f_θ(x_t, t, emb, context): the denoiser of the decoder and the upsamplers; what it predicts
    (ε, v or x_0) is the caller's choice of diffusion parametrisation."""

    def __init__(self, cfg: UNetConfig, resolution: int):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.emb_dim = 4 * ch
        self.time_embed = nn.Sequential(
            nn.Linear(ch, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim)
        )

        def block(cin: int, cout: int, size: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, self.emb_dim, cfg.dropout, cfg.groups)]
            if size in cfg.attention_resolutions:
                layers.append(AttentionBlock(cout, cfg.head_channels, cfg.context_dim, cfg.groups))
            return nn.ModuleList(layers)

        self.input_conv = nn.Conv2d(cfg.in_channels + 2 * cfg.coords, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        skips, size, cin = [ch], resolution, ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(cin, ch * mult, size))
                cin = ch * mult
                skips.append(cin)
            if level + 1 < len(cfg.channel_mult):
                self.down.append(nn.ModuleList([Downsample(cin)]))
                skips.append(cin)
                size //= 2
        self.middle = nn.ModuleList(
            [
                ResBlock(cin, cin, self.emb_dim, cfg.dropout, cfg.groups),
                AttentionBlock(cin, cfg.head_channels, cfg.context_dim, cfg.groups)
                if cfg.attention_resolutions
                else nn.Identity(),
                ResBlock(cin, cin, self.emb_dim, cfg.dropout, cfg.groups),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = block(cin + skips.pop(), ch * mult, size)
                cin = ch * mult
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(cin))
                    size *= 2
                self.up.append(layers)
        self.out = nn.Sequential(
            _norm(cin, cfg.groups), nn.SiLU(), _zero(nn.Conv2d(cin, cfg.out_channels, 3, 1, 1))
        )

    def _run(self, layers, h, emb, context, context_mask):  # noqa: ANN001, ANN202
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        emb: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, in_channels, H, W), t (B,) -> (B, out_channels, H, W).

        `emb` (B, 4·channels) is added to the timestep embedding (unCLIP adds projected z_i
        there, §2.1); `context` tokens are attended to by every attention layer.
        """
        e = self.time_embed(timestep_embedding(t, self.cfg.channels))  # (B, E)
        if emb is not None:
            e = e + emb
        if self.cfg.coords:
            B, _, H, W = x.shape
            ys, xs = torch.meshgrid(
                torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype),
                torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype),
                indexing="ij",
            )
            x = torch.cat([x, torch.stack([xs, ys]).expand(B, 2, H, W)], dim=1)
        h = self.input_conv(x.contiguous(memory_format=MEMORY_FORMAT))
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, e, context, context_mask)
            hs.append(h)
        h = self._run(self.middle, h, e, context, context_mask)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], dim=1), e, context, context_mask)
        return self.out(h).contiguous()  # (B, out_channels, H, W), the usual layout
