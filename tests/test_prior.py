"""The diffusion prior (§2.2 of unCLIP): sequence layout, causal mask, text dropout, guidance."""

from __future__ import annotations

import math

import pytest
import torch

from unclip_repro.clip import TextEncoding
from unclip_repro.prior import CaptionOnlyPrior, DiffusionPrior, PriorConfig, TextEmbeddingPrior
from unclip_repro.sequence import CausalTransformer

D, W, L, B = 16, 24, 10, 3


def _prior(**kw) -> DiffusionPrior:
    torch.manual_seed(0)
    cfg = PriorConfig(width=32, layers=2, heads=2, sample_steps=4, **kw)
    return DiffusionPrior(cfg, D, W, L).eval()


def _text(seed: int = 0, lengths=(4, 7, 10)) -> TextEncoding:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]  # (B, L)
    tokens = torch.randn(len(lengths), L, W, generator=g) * mask[..., None]
    z_t = torch.nn.functional.normalize(torch.randn(len(lengths), D, generator=g), dim=-1)
    return TextEncoding(z_t, tokens, mask)


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.tensor([0, 500, 999])


def test_scale_is_sqrt_dim_by_default_and_configurable():
    assert _prior().scale == pytest.approx(math.sqrt(D))
    assert _prior(embed_scale=17.2).scale == 17.2


def test_causal_transformer_output_depends_only_on_earlier_tokens():
    torch.manual_seed(0)
    net = CausalTransformer(16, 2, 2, max_len=8).eval()
    x = torch.randn(2, 8, 16)
    valid = torch.ones(2, 8, dtype=torch.bool)
    y = net(x, valid, prefix=3)
    x2 = x.clone()
    x2[:, 5:] += 1.0  # change tokens 5, 6, 7
    y2 = net(x2, valid, prefix=3)
    torch.testing.assert_close(y[:, :5], y2[:, :5])
    assert not torch.allclose(y[:, 5:], y2[:, 5:])


def test_padded_caption_tokens_change_nothing():
    prior, text = _prior(), _text()
    x_t, t = _inputs()
    out = prior.denoise(x_t, t, text.tokens, text.mask, text.z_t)
    noisy = text.tokens + 5.0 * (~text.mask[..., None])  # garbage in the padding only
    torch.testing.assert_close(out, prior.denoise(x_t, t, noisy, text.mask, text.z_t))
    # and trailing all-padding columns can be cut off (a batch is as long as its longest caption)
    short = _text(lengths=(4, 7, 7))
    torch.testing.assert_close(
        prior.denoise(x_t, t, short.tokens, short.mask, short.z_t),
        prior.denoise(x_t, t, short.tokens[:, :7], short.mask[:, :7], short.z_t),
    )


def test_query_output_reads_every_part_of_the_sequence():
    """[tokens, z_t, t, noised z_i, query]: the final output depends on each conditioning input."""
    prior, text = _prior(), _text()
    x_t, t = _inputs()
    base = prior.denoise(x_t, t, text.tokens, text.mask, text.z_t)
    changed = {
        "tokens": prior.denoise(x_t, t, text.tokens + text.mask[..., None], text.mask, text.z_t),
        "z_t": prior.denoise(x_t, t, text.tokens, text.mask, -text.z_t),
        "t": prior.denoise(x_t, (t + 250) % 1000, text.tokens, text.mask, text.z_t),
        "x_t": prior.denoise(x_t + 1, t, text.tokens, text.mask, text.z_t),
    }
    for name, out in changed.items():
        assert (out - base).abs().amax(1).min() > 1e-4, name


def test_unconditional_branch_drops_the_text_but_never_the_noised_embedding():
    prior = _prior()
    x_t, t = _inputs()
    drop = torch.ones(B, dtype=torch.bool)
    a, b = _text(0), _text(5, lengths=(2, 3, 9))
    out_a = prior.denoise(x_t, t, a.tokens, a.mask, a.z_t, drop)
    out_b = prior.denoise(x_t, t, b.tokens, b.mask, b.z_t, drop)
    torch.testing.assert_close(out_a, out_b)  # blind to the caption
    out_c = prior.denoise(x_t + 1.0, t, a.tokens, a.mask, a.z_t, drop)
    assert (out_c - out_a).abs().amax(1).min() > 1e-4  # still sees what it denoises
    # dropping is per sample: a kept row is the conditional output
    mixed = torch.tensor([True, False, True])
    out_m = prior.denoise(x_t, t, a.tokens, a.mask, a.z_t, mixed)
    cond = prior.denoise(x_t, t, a.tokens, a.mask, a.z_t)
    torch.testing.assert_close(out_m[1], cond[1])
    torch.testing.assert_close(out_m[0], out_a[0])


def test_training_drops_text_about_ten_percent_of_the_time(monkeypatch):
    prior = _prior()
    seen = []
    original = prior.denoise

    def spy(*args, drop=None, **kw):
        seen.append(drop.float().mean().item())
        return original(*args, drop=drop, **kw)

    monkeypatch.setattr(prior, "denoise", spy)
    text = _text(lengths=(5,) * 3)
    n = 4000
    torch.manual_seed(0)
    prior(
        text.tokens[:1].expand(n, -1, -1),
        text.mask[:1].expand(n, -1),
        text.z_t[:1].expand(n, -1),
        text.z_t[:1].expand(n, -1),
    )
    assert seen[0] == pytest.approx(0.1, abs=0.015)


def test_loss_regresses_the_clean_scaled_embedding():
    """The target is c·z_i itself (x_0 parametrisation), not the noise."""
    prior, text = _prior(), _text()
    z_i = text.z_t.flip(0)
    prior.denoise = lambda x_t, t, **kw: z_i * prior.scale  # a perfect x_0 predictor
    assert prior(text.tokens, text.mask, text.z_t, z_i).item() == pytest.approx(0.0, abs=1e-10)


def test_sample_is_unit_norm_seeded_and_guidance_zero_ignores_the_caption():
    prior = _prior()
    a, b = _text(0), _text(5, lengths=(2, 3, 9))

    def draw(text, **kw):
        return prior.sample(text, generator=torch.Generator().manual_seed(3), **kw)

    z = draw(a)
    assert z.shape == (B, D)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(z, draw(a))  # seeded
    # guidance 0 samples the unconditional branch: the same for every caption (1 candidate,
    # since choosing among candidates looks at z_t)
    torch.testing.assert_close(
        draw(a, guidance=0.0, candidates=1), draw(b, guidance=0.0, candidates=1)
    )
    assert not torch.allclose(draw(a, candidates=1), draw(b, candidates=1))
    assert not torch.allclose(draw(a, guidance=3.0), z)


def test_sample_keeps_the_candidate_closest_to_the_text(monkeypatch):
    prior, text = _prior(candidates=3), _text()
    draws = torch.nn.functional.normalize(torch.randn(B * 3, D), dim=-1)
    monkeypatch.setattr(prior.diffusion, "sample", lambda *a, **k: draws * prior.scale)
    z = prior.sample(text)
    per_caption = draws.view(B, 3, D)
    best = (per_caption * text.z_t[:, None]).sum(-1).argmax(1)
    torch.testing.assert_close(z, per_caption[torch.arange(B), best])


def test_baselines():
    text = _text()
    torch.testing.assert_close(TextEmbeddingPrior().sample(text), text.z_t)
    assert CaptionOnlyPrior().sample(text).abs().sum() == 0
