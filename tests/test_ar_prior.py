"""The autoregressive prior (§2.2 of unCLIP): PCA, quantizer, token layout, sampling filters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unclip_repro.ar_prior import (
    PCA,
    ARPrior,
    ARPriorConfig,
    Quantizer,
    above_percentile,
    top_k_filter,
)
from unclip_repro.clip import TextEncoding

D, W, L = 12, 16, 8


def _embeddings(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors with a decaying spectrum (a few strong directions), and 'text' near them."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.tensor([3.0, 2.0, 1.0, 0.5] + [0.02] * (D - 4))
    z_i = F.normalize(torch.randn(n, D, generator=g) * spectrum + 0.5, dim=-1)
    z_t = F.normalize(z_i + 0.3 * torch.randn(n, D, generator=g), dim=-1)
    return z_i, z_t


def _text(n: int, z_t: torch.Tensor, seed: int = 0) -> TextEncoding:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, L, dtype=torch.bool)
    return TextEncoding(z_t, torch.randn(n, L, W, generator=g), mask)


def _prior(**kw) -> ARPrior:
    torch.manual_seed(0)
    cfg = ARPriorConfig(width=32, layers=2, heads=2, buckets=64, **kw)
    prior = ARPrior(cfg, D, W, L).eval()
    prior.fit(*_embeddings(4000))
    return prior


def test_pca_orders_components_and_keeps_the_fewest_under_the_error_budget():
    z, _ = _embeddings(5000)
    pca = PCA(D)
    pca.fit(z, max_error=0.01)
    assert torch.all(pca.eigenvalues[:-1] >= pca.eigenvalues[1:])  # largest first
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(D), atol=1e-5, rtol=0)
    k = int(pca.k)
    residual = pca.residual()
    assert residual[k] < 0.01 <= residual[k - 1]  # k is the fewest that meet the budget
    assert 3 <= k < D
    # the measured squared error of truncation is the residual eigenvalue mass
    centred = z - z.mean(0)
    error = (pca.decode(pca.encode(z)) - z).pow(2).sum(1).mean() / centred.pow(2).sum(1).mean()
    assert error.item() == pytest.approx(residual[k].item(), rel=1e-3)
    pca.k.fill_(D)  # all components: exact
    torch.testing.assert_close(pca.decode(pca.encode(z)), z, atol=1e-5, rtol=0)


def test_quantizer_buckets_are_equal_mass_ordered_and_round_trip_closely():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 3, generator=g) * torch.tensor([1.0, 0.1, 5.0])
    q = Quantizer(3, 64)
    q.fit(x)
    codes = q.encode(x)
    assert codes.min() >= 0 and codes.max() < 64
    counts = torch.stack([torch.bincount(codes[:, c], minlength=64) for c in range(3)])
    assert counts.min() > 0.8 * len(x) / 64 and counts.max() < 1.2 * len(x) / 64
    assert torch.all(q.values[:, 1:] > q.values[:, :-1])  # codes in increasing value
    # larger values never get smaller codes
    xs = torch.linspace(-3, 3, 101)[:, None].expand(-1, 3)
    assert torch.all(q.encode(xs)[1:] >= q.encode(xs)[:-1])
    # error relative to the variance: small, and 4x finer buckets cut it by over 3 (the
    # outermost buckets hold the unbounded Gaussian tails and keep it from the 16x of
    # high-rate theory; it varies with the sample: 3.3x to 5.5x measured)
    rel = (q.decode(codes) - x).pow(2).mean(0) / x.var(0)
    assert torch.all(rel < 1e-2)
    finer = Quantizer(3, 256)
    finer.fit(x)
    rel_finer = (finer.decode(finer.encode(x)) - x).pow(2).mean(0) / x.var(0)
    assert torch.all(rel_finer < rel / 3)


def test_encode_decode_round_trip_of_embeddings():
    prior = _prior()
    z_i, z_t = _embeddings(1000, seed=1)  # not the fitting set
    tokens = prior.encode(z_i, z_t)
    assert tokens.shape == (1000, 1 + prior.k)
    recon = prior.reconstruction(z_i)
    assert recon.cosine > 0.98 and recon.pca_only_cosine >= recon.cosine - 1e-3
    # the dot-product token is ordered like z_i · z_t
    dots = (z_i * z_t).sum(-1)
    order = dots.argsort()
    assert torch.all(tokens[order, 0][1:] >= tokens[order, 0][:-1])


def test_token_layout_is_causal():
    """Row j of the logits predicts token j of [dot, c_1 … c_k] from tokens before j only."""
    prior = _prior()
    z_i, z_t = _embeddings(2, seed=2)
    text = _text(2, z_t)
    seq = prior.encode(z_i, z_t)
    logits = prior.logits(text.tokens, text.mask, text.z_t, seq)
    assert logits.shape == (2, seq.shape[1] + 1, 64)
    j = 3
    changed = seq.clone()
    changed[:, j:] = (changed[:, j:] + 7) % 64
    logits2 = prior.logits(text.tokens, text.mask, text.z_t, changed)
    torch.testing.assert_close(logits[:, : j + 1], logits2[:, : j + 1])
    assert not torch.allclose(logits[:, j + 1 :], logits2[:, j + 1 :])
    # row 0 (the dot token) sees the caption
    logits3 = prior.logits(text.tokens, text.mask, -text.z_t, seq)
    assert not torch.allclose(logits[:, 0], logits3[:, 0])


def test_loss_is_cross_entropy_over_all_tokens_and_text_dropout_hides_the_caption():
    prior = _prior()
    z_i, z_t = _embeddings(8, seed=3)
    text = _text(8, z_t)
    loss = prior(text.tokens, text.mask, text.z_t, z_i)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), rel=0.2)
    drop = torch.ones(8, dtype=torch.bool)
    seq = prior.encode(z_i, z_t)
    a = prior.logits(text.tokens, text.mask, text.z_t, seq, drop)
    b = prior.logits(-text.tokens, text.mask, -text.z_t, seq, drop)
    torch.testing.assert_close(a, b)


def test_above_percentile_keeps_the_top_of_an_ordered_distribution():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2]])
    kept = above_percentile(p.log(), 0.5).isfinite()
    assert kept.tolist() == [[False, False, True, True, True]]  # cdf .1 .3 .6 .8 1
    assert above_percentile(p.log(), 0.0).isfinite().all()
    samples = torch.multinomial(above_percentile(p.log(), 0.5).softmax(-1), 1000, True)
    assert samples.min() >= 2


def test_top_k_filter():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert top_k_filter(logits, 2).isfinite().tolist() == [[False, True, False, True]]
    assert top_k_filter(logits, None).isfinite().all()


def test_sample_is_seeded_unit_norm_and_guidance_zero_ignores_the_caption():
    prior = _prior()
    z_i, z_t = _embeddings(3, seed=4)
    a, b = _text(3, z_t), _text(3, -z_t, seed=9)

    def draw(text, **kw):
        return prior.sample(text, generator=torch.Generator().manual_seed(0), **kw)

    z = draw(a)
    assert z.shape == (3, D)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(z, draw(a))
    torch.testing.assert_close(draw(a, guidance=0.0), draw(b, guidance=0.0))
    assert not torch.allclose(draw(a), draw(b))
