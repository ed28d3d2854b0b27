"""The UnCLIP pipeline: loading, determinism, manipulations of the bipartite latent (§3)."""

from __future__ import annotations

import pytest
import torch

from unclip_repro import checkpoint
from unclip_repro.pipeline import UnCLIP, UnknownWordsWarning, moved, slerp


def test_slerp_endpoints_and_norm():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid / mid.norm(), torch.tensor([[2**-0.5, 2**-0.5]]))
    assert mid.norm().item() == pytest.approx(1.5)


def test_generate_is_deterministic_per_seed_and_upsampled(smoke_runs):
    model = UnCLIP.load(smoke_runs)
    captions = ["a red circle", "a small blue square on the left"]
    a = model.generate(captions, seed=1)
    assert a.shape == (2, 3, 128, 128) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, model.generate(captions, seed=1))
    assert not torch.allclose(a, model.generate(captions, seed=2))
    base = model.generate(captions, seed=1, prior="ar", upsample=False)
    assert base.shape == (2, 3, 32, 32)
    for prior in ("text", "none"):
        assert model.generate(captions, seed=0, prior=prior, upsample=False).shape == base.shape
    assert model.generate_glide(captions, upsample=False).shape == base.shape
    with pytest.raises(ValueError, match="unknown prior"):
        model.generate(captions, prior="nope")


def test_unknown_words_warn_naming_them(smoke_runs):
    model = UnCLIP.load(smoke_runs)
    with pytest.warns(UnknownWordsWarning, match="unicorn, zebra"):
        model.generate(["a zebra unicorn"], upsample=False)


def test_manipulations_shapes_and_reconstruction(smoke_runs):
    model = UnCLIP.load(smoke_runs)
    image = torch.rand(3, 32, 32)
    var = model.variations(image, n=3, upsample=False)
    assert var.shape == (3, 3, 32, 32)
    inter = model.interpolate(image, torch.rand(3, 64, 64), n=4, upsample=False)
    assert inter.shape == (4, 3, 32, 32)
    diff = model.text_diff(
        image, "a red circle", "a blue circle", n=3, method="prior", upsample=False
    )
    assert diff.shape == (3, 3, 32, 32)
    # λ = 0 of a caption-free text diff and the first interpolation frame both decode the
    # inverted latent
    torch.testing.assert_close(diff[0], inter[0], atol=1e-4, rtol=0)
    paper = model.text_diff(
        image, "a red circle", "a blue circle", n=3, method="text", steps=4, upsample=False
    )
    assert paper.shape == (3, 3, 32, 32) and not torch.allclose(paper[0], diff[0])  # 4 steps
    captioned = model.text_diff(
        image, "a red circle", "a blue circle", n=2, method="caption", steps=4, upsample=False
    )
    assert captioned.shape == (2, 3, 32, 32) and not torch.allclose(captioned[0], paper[0])
    with pytest.raises(ValueError, match="unknown text-diff method 'clip'"):
        model.text_diff(image, "a red circle", "a blue circle", method="clip")
    with pytest.raises(ValueError, match="RGB"):
        model.variations(torch.rand(32, 32))


def test_load_refuses_missing_and_mismatched_components(mismatched_runs, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no clip checkpoint.*make train"):
        UnCLIP.load(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="another CLIP"):
        UnCLIP.load(mismatched_runs)


def test_text_diff_moves():
    """The paper's text diff rotates z_i towards z_d (θ = 1 lands on it); the prior's shifts
    it by λ·Δ; both start at z_i and stay unit vectors."""
    z_i = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    for method in ("text", "prior"):
        torch.testing.assert_close(moved(method, z_i, d, 0.0), z_i)
        assert torch.allclose(moved(method, z_i, d, 0.7).norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(moved("text", z_i, d, 1.0), d, atol=1e-5, rtol=0)
    shifted = moved("prior", z_i, d, torch.tensor([0.0, 0.5, 2.0]))
    want = torch.nn.functional.normalize(z_i + torch.tensor([0.0, 0.5, 2.0])[:, None] * d, dim=-1)
    torch.testing.assert_close(shifted, want)
