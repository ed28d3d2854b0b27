"""Solutions to the exercises of notebook 06 (the upsamplers), and `check()` for the tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from unclip_repro.checkpoint import shipped
from unclip_repro.components import load_component
from unclip_repro.config import get_preset, override
from unclip_repro.data.shapes import sample_batch
from unclip_repro.train import train
from unclip_repro.upsampler import Upsampler


def psnr(images: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE), in dB (images in [0, 1])."""
    return float((-10 * torch.log10((images - truth).pow(2).flatten(1).mean(1))).mean())


def train_without_corruption(out: str | Path, steps: int = 300, progress: bool = False):
    """Exercise 1: the shapes preset's stage-1 upsampler trained on clean inputs only
    (`corrupt_p = 0`: no input is ever blurred), into the run folder `out`; returns it loaded."""
    changes = {"upsampler1.corrupt_p": 0.0, "train.upsampler1.steps": steps}
    train(override(get_preset("shapes"), changes), "upsampler1", out, progress=progress)
    return load_component(out)


def psnr_by_steps(
    upsampler: Upsampler, x_low: torch.Tensor, truth: torch.Tensor, ks: list[int], seed: int = 0
) -> pd.Series:
    """Exercise 2: PSNR to `truth` of `upsampler`'s samples of `x_low` with K DDIM steps, per K
    (the same starting noise for every K)."""
    rows = {
        k: psnr(
            upsampler.sample(x_low, steps=k, generator=torch.Generator().manual_seed(seed)), truth
        )
        for k in ks
    }
    return pd.Series(rows, name="PSNR (dB)").rename_axis("DDIM steps K")


@torch.no_grad()
def upsample_any_size(
    upsampler: Upsampler,
    x_low: torch.Tensor,
    steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exercise 3: upsample x_low (B, 3, h, h) in [0, 1] by the stage's factor at any h, not
    only the size it was configured for (`Upsampler.sample` draws at `cfg.high`)."""
    cfg = upsampler.cfg
    size = x_low.shape[-1] * cfg.high // cfg.low
    cond = upsampler.condition(x_low, size)  # (B, 3, size, size) in [−1, 1]
    x = upsampler.diffusion.sample(
        lambda x_t, t: upsampler.denoise(x_t, t, cond),
        (x_low.shape[0], 3, size, size),
        steps=steps or cfg.sample_steps,
        eta=0.0,
        generator=generator,
        clip_x0=(-2.0, 2.0) if cfg.residual else (-1.0, 1.0),
    )
    x = x + cond if cfg.residual else x
    return ((x + 1) / 2).clamp(0, 1)


def check() -> None:
    """Each solution does what its exercise asks (a few seconds of CPU)."""
    torch.manual_seed(0)
    up1 = load_component(shipped("shapes") / "upsampler1")
    truth, _ = sample_batch(np.random.default_rng(0), 2, 64)
    x_low = F.interpolate(truth, size=32, mode="area")

    # Exercise 2: one PSNR per K, each the PSNR of the package's own K-step sample
    table = psnr_by_steps(up1, x_low, truth, [1, 3])
    assert list(table.index) == [1, 3] and np.isfinite(table.to_numpy()).all()
    direct = up1.sample(x_low, steps=3, generator=torch.Generator().manual_seed(0))
    assert abs(table[3] - psnr(direct, truth)) < 1e-6

    # Exercise 3: at the configured size it is the package's sampler; at 24 px it makes 48 px
    same = upsample_any_size(up1, x_low, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(same, direct, atol=1e-6)
    small = F.interpolate(truth, size=24, mode="area")
    out = upsample_any_size(up1, small, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 48, 48) and 0 <= out.min() and out.max() <= 1

    # Exercise 1: the trained upsampler never corrupts its inputs
    with tempfile.TemporaryDirectory() as tmp:
        clean = train_without_corruption(Path(tmp) / "upsampler1", steps=2)
    assert clean.cfg.corrupt_p == 0.0 and clean.cfg.degradation == "blur"
    assert torch.equal(clean.corrupt(x_low, np.random.default_rng(0)), x_low)
