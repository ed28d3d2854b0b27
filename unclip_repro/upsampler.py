"""The diffusion upsamplers of §2.1 of unCLIP: 64→256 and 256→1024 in the paper, ×2 and ×2 here.

Each is a convolution-only U-Net (no attention, no caption) that denoises the high-resolution
image given the low-resolution one, concatenated (after bilinear upsampling) to its input
channels. To make it robust to the imperfect images the stage before produces, the
low-resolution input is *corrupted* in training (§2.1):
- stage 1: Gaussian blur, kernel 3, σ = 0.6;
- stage 2: a BSR-style degradation (Zhang et al. 2021): random blur, downsampling with a
  random kernel, Gaussian noise and JPEG compression, each applied with some probability.
Training uses random crops of the target image (a quarter of its side in the paper: the
network is convolutional, so it samples full images afterwards), and sampling uses DDIM with
few steps (the paper: 27 and 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.functional import gaussian_blur

from .diffusion import GaussianDiffusion, Prediction, cosine_betas, linear_betas
from .unet import UNet, UNetConfig

Degradation = Literal["blur", "bsr"]


@dataclass
class UpsamplerConfig:
    """One upsampling stage (Table 3 of unCLIP for the paper's two)."""

    unet: UNetConfig = field(
        default_factory=lambda: UNetConfig(
            in_channels=6, channels=32, channel_mult=(1, 2, 2), attention_resolutions=()
        )
    )
    low: int = 32  # input resolution
    high: int = 64  # output resolution
    degradation: Degradation = "blur"
    schedule: Literal["cosine", "linear"] = "cosine"  # Table 3: cosine, then linear for stage 2
    timesteps: int = 1000
    sample_steps: int = 27  # DDIM steps (Table 3: 27 and 15)
    crop: int = 16  # training crop side, in high-resolution pixels (the paper: high / 4)
    prediction: Prediction = "eps"  # what the U-Net predicts (the paper: ε)
    # diffuse the residual x − upsampled(low) rather than x: the low frequencies then come from
    # the condition from the first step on (not in the paper; for short CPU training)
    residual: bool = False
    # the probability a training input is corrupted (the paper: always). Trained only on
    # corrupted inputs, an upsampler sharpens the clean ones it is given at sampling, ringing
    # into dark rims around flat shapes (docs/history.md); seeing both, it does not
    corrupt_p: float = 1.0


def blur(images: Tensor, sigma: float = 0.6) -> Tensor:
    """Gaussian blur with a 3×3 kernel (§2.1: the first upsampler's corruption)."""
    return gaussian_blur(images, kernel_size=3, sigma=sigma)


def bsr_degrade(images: Tensor, generator: np.random.Generator) -> Tensor:
    """A BSR-style degradation of low-resolution images (B, 3, h, h) in [0, 1], one random
    chain per image, all drawn from `generator`: blur (p 0.7, σ ~ U[0.2, 1.5]), resize down
    and back with a random interpolation (p 0.5), Gaussian noise (p 0.5, σ ~ U[0, 0.04]),
    JPEG (p 0.5, quality 30–95) — a reduced version of Zhang et al. 2021's (BSRGAN) chain."""
    out = []
    h = images.shape[-1]
    for img in images:
        x = img[None]
        if generator.random() < 0.7:
            x = gaussian_blur(x, kernel_size=5, sigma=float(generator.uniform(0.2, 1.5)))
        if generator.random() < 0.5:
            mode = ["bilinear", "bicubic", "area"][generator.integers(3)]
            small = max(4, int(h * generator.uniform(0.5, 1.0)))
            x = F.interpolate(x, size=(small, small), mode=mode)
            x = F.interpolate(x, size=(h, h), mode="bilinear", align_corners=False)
        if generator.random() < 0.5:
            noise = torch.from_numpy(generator.standard_normal(x.shape)).to(x)
            x = x + noise * float(generator.uniform(0, 0.04))
        x = x.clamp(0, 1)
        if generator.random() < 0.5:
            quality = int(generator.integers(30, 96))
            data = encode_jpeg((x[0] * 255).round().to(torch.uint8).cpu(), quality=quality)
            x = decode_jpeg(data)[None].float().div(255).to(images.device)
        out.append(x)
    return torch.cat(out)


class Upsampler(nn.Module):
    """f_θ(x_t, t | low-resolution image), predicting ε, v or x_0 (`cfg.prediction`; the residual
    over the upsampled input with `cfg.residual`): `forward` is the loss, `sample` upsamples."""

    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        if cfg.unet.attention_resolutions or cfg.unet.context_dim:
            raise ValueError("the upsamplers are convolution-only: no attention, no context")
        if cfg.unet.coords:
            raise ValueError("the upsamplers train on crops: coordinate channels would lie")
        if cfg.unet.in_channels != 6:
            raise ValueError("an upsampler's U-Net takes 6 channels: x_t and the low-res image")
        self.cfg = cfg
        betas = cosine_betas if cfg.schedule == "cosine" else linear_betas
        self.diffusion = GaussianDiffusion(betas(cfg.timesteps), prediction=cfg.prediction)
        self.unet = UNet(cfg.unet, cfg.crop)

    def condition(self, low: Tensor, size: int) -> Tensor:
        """Low-resolution images (B, 3, h, h) in [0, 1] -> the U-Net's extra channels at `size`."""
        up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        return up * 2 - 1  # (B, 3, size, size) in [−1, 1]

    def denoise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The prediction of `cfg.prediction` for x_t (B, 3, H, W) given the upsampled condition
        (B, 3, H, W)."""
        return self.unet(torch.cat([x_t, cond], dim=1), t)

    def corrupt(self, low: Tensor, rng: np.random.Generator) -> Tensor:
        """The training-time corruption of the low-resolution inputs (B, 3, h, h) (§2.1), each
        image with probability `cfg.corrupt_p`."""
        # every image is corrupted first, so that `rng` is drawn as before whatever corrupt_p
        corrupted = blur(low) if self.cfg.degradation == "blur" else bsr_degrade(low, rng)
        if self.cfg.corrupt_p >= 1.0:  # the paper's setting draws nothing more from `rng`
            return corrupted
        keep = torch.from_numpy(rng.random(len(low)) >= self.cfg.corrupt_p)  # (B,) stay clean
        return torch.where(keep[:, None, None, None], low, corrupted)

    def forward(self, images: Tensor, low: Tensor, top: Tensor, left: Tensor) -> Tensor:
        """Loss on crops: high-res images (B, 3, H, H), their corrupted low-res (B, 3, h, h),
        and each crop's corner (B,) in high-resolution pixels."""
        c = self.cfg.crop
        cond = self.condition(low, images.shape[-1])
        crops = [
            (img[:, y : y + c, x : x + c], cnd[:, y : y + c, x : x + c])
            for img, cnd, y, x in zip(images, cond, top.tolist(), left.tolist(), strict=True)
        ]
        x0 = torch.stack([a for a, _ in crops]) * 2 - 1  # (B, 3, c, c)
        cond = torch.stack([b for _, b in crops])
        if self.cfg.residual:
            x0 = x0 - cond  # in [−2, 2]
        return self.diffusion.training_loss(self.denoise, x0, model_kwargs={"cond": cond})

    @torch.no_grad()
    def sample(
        self,
        low: Tensor,
        steps: int | None = None,
        eta: float = 0.0,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Upsample images (B, 3, h, h) in [0, 1] to (B, 3, H, H) in [0, 1] with DDIM (`steps`
        None: `cfg.sample_steps`)."""
        size = self.cfg.high
        cond = self.condition(low, size)
        x = self.diffusion.sample(
            lambda x_t, t: self.denoise(x_t, t, cond),
            (low.shape[0], 3, size, size),
            steps=steps or self.cfg.sample_steps,
            eta=eta,
            noise=noise,
            generator=generator,
            clip_x0=(-2.0, 2.0) if self.cfg.residual else (-1.0, 1.0),
            progress=progress,
            device=low.device,
        )
        x = x + cond if self.cfg.residual else x
        return ((x + 1) / 2).clamp(0, 1)
