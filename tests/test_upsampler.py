"""The upsamplers (§2.1 of unCLIP): corruptions, crops, convolution-only, DDIM sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unclip_repro.unet import UNetConfig
from unclip_repro.upsampler import Upsampler, UpsamplerConfig, blur, bsr_degrade

SMALL = UNetConfig(in_channels=6, channels=16, channel_mult=(1, 2), attention_resolutions=())


def test_blur_is_the_papers_3x3_gaussian_with_sigma_0_6():
    x = torch.zeros(1, 3, 9, 9)
    x[..., 4, 4] = 1.0
    k = blur(x)[0, 0, 3:6, 3:6]
    g = torch.exp(-(torch.tensor([1.0, 0.0, 1.0]) ** 2) / (2 * 0.6**2))
    expected = torch.outer(g, g) / torch.outer(g, g).sum()
    torch.testing.assert_close(k, expected)
    assert blur(x)[0, 0].sum() == pytest.approx(1.0)
    assert blur(x)[0, 0, 2].abs().sum() == 0  # kernel size 3: nothing two pixels away


def test_bsr_degradation_is_random_per_image_seeded_and_in_range():
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = bsr_degrade(x, np.random.default_rng(1))
    b = bsr_degrade(x, np.random.default_rng(1))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    changed = [(a[i] - x[i]).abs().mean().item() for i in range(6)]
    assert max(changed) > 0.01 and len({round(c, 4) for c in changed}) > 1


@pytest.mark.parametrize("degradation", ["blur", "bsr"])
def test_corrupt_p_leaves_that_share_of_inputs_clean_and_one_corrupts_all(degradation):
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    up = lambda p: Upsampler(UpsamplerConfig(unet=SMALL, degradation=degradation, corrupt_p=p))
    clean = lambda out: [bool((out[i] == x[i]).all()) for i in range(len(x))]
    everything = up(1.0).corrupt(x, np.random.default_rng(0))
    half = up(0.5).corrupt(x, np.random.default_rng(0))
    assert sum(clean(everything)) <= (32 if degradation == "bsr" else 0)  # bsr may draw nothing
    assert 16 < sum(clean(half)) - sum(clean(everything)) / 2 < 48
    if degradation == "blur":  # the corrupted ones are the blur, untouched ones exact copies
        kept = torch.tensor(clean(half))
        torch.testing.assert_close(half[~kept], blur(x[~kept]))


def test_upsampler_refuses_attention_or_context():
    with pytest.raises(ValueError, match="convolution-only"):
        Upsampler(UpsamplerConfig(unet=UNetConfig(in_channels=6, attention_resolutions=(8,))))
    with pytest.raises(ValueError, match="6 channels"):
        Upsampler(UpsamplerConfig(unet=UNetConfig(in_channels=3, attention_resolutions=())))
    with pytest.raises(ValueError, match="crops"):
        unet = UNetConfig(in_channels=6, attention_resolutions=(), coords=True)
        Upsampler(UpsamplerConfig(unet=unet))


def test_loss_on_crops_and_full_size_sampling():
    torch.manual_seed(0)
    up = Upsampler(UpsamplerConfig(unet=SMALL, low=16, high=32, crop=8, sample_steps=3))
    images = torch.rand(2, 3, 32, 32)
    low = torch.nn.functional.interpolate(images, size=(16, 16), mode="area")
    loss = up(
        images,
        up.corrupt(low, np.random.default_rng(0)),
        torch.tensor([0, 24]),
        torch.tensor([5, 0]),
    )
    assert loss.ndim == 0 and loss.item() > 0
    out = up.sample(low, generator=torch.Generator().manual_seed(0))  # full images, not crops
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, up.sample(low, generator=torch.Generator().manual_seed(0)))


def test_residual_upsampler_diffuses_the_difference_to_its_upsampled_input():
    cfg = UpsamplerConfig(unet=SMALL, low=16, high=32, crop=32, prediction="x0", residual=True)
    up = Upsampler(cfg)
    up.unet.forward = lambda x, t: torch.zeros_like(x[:, :3])  # predicts a zero residual
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    low = torch.nn.functional.interpolate(images, size=(16, 16), mode="area")
    upsampled = up.condition(low, 32)  # in [−1, 1]
    corner = torch.tensor([0, 0])
    expected = (images * 2 - 1 - upsampled).pow(2).mean()  # the residual is the x0 target
    torch.testing.assert_close(up(images, low, corner, corner), expected)
    out = up.sample(low, steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, ((upsampled + 1) / 2).clamp(0, 1))  # the input, upsampled
