"""Solutions to notebook 04's exercises (the autoregressive prior: PCA, buckets, dot token).

Values are (N, C) tensors of principal coordinates or embeddings; log-probabilities are
(B, buckets) rows over ordered buckets, as in the notebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def truncated_cosine(z: Tensor, k: int) -> float:
    """Exercise 1: mean cosine of z (N, D) with itself after PCA to k components and back."""
    z = z.double()
    mu = z.mean(0)
    _, vectors = torch.linalg.eigh((z - mu).T @ (z - mu) / len(z))  # ascending
    V_k = vectors.flip(1)[:, :k]  # (D, k): the k leading components
    back = F.normalize(mu + (z - mu) @ V_k @ V_k.T, dim=-1)
    return (back * F.normalize(z, dim=-1)).sum(-1).mean().item()


def uniform_quantizer(x: Tensor, B: int) -> tuple[Tensor, Tensor]:
    """Exercise 2: edges (C, B-1) equally spaced from each column's min to max; bucket means."""
    x = x.double()
    lo, hi = x.min(0).values, x.max(0).values  # (C,)
    steps = torch.arange(1, B, dtype=x.dtype) / B  # (B-1,)
    edges = (lo[:, None] + (hi - lo)[:, None] * steps[None]).contiguous()  # (C, B-1)
    codes = torch.searchsorted(edges, x.T.contiguous(), right=True)  # (C, N)
    sums = torch.zeros(x.shape[1], B, dtype=x.dtype).scatter_add_(1, codes, x.T)
    counts = torch.zeros_like(sums).scatter_add_(1, codes, torch.ones_like(x.T))
    middles = torch.cat([lo[:, None], edges, hi[:, None]], 1)  # an empty bucket: its middle
    middles = (middles[:, 1:] + middles[:, :-1]) / 2
    return edges, torch.where(counts > 0, sums / counts.clamp(min=1), middles)


def bucket_counts(x: Tensor, edges: Tensor) -> Tensor:
    """Exercise 2: training values per bucket of the first column of x (N, C), (B,)."""
    codes = torch.searchsorted(edges[0].to(x.dtype), x[:, 0].contiguous(), right=True)
    return codes.bincount(minlength=edges.shape[1] + 1)


def dot_band(logp: Tensor, lo: float, hi: float) -> Tensor:
    """Exercise 3: log-probabilities (B, buckets) with every bucket outside the [lo, hi]
    quantile band of its row masked to -inf (the bucket holding each quantile is kept)."""
    p = logp.exp()
    cdf = p.cumsum(-1) / p.sum(-1, keepdim=True)  # probability up to and including the bucket
    below = cdf < lo  # entirely below the lo-quantile
    above = (cdf - p / p.sum(-1, keepdim=True)) > hi  # starts above the hi-quantile
    return logp.masked_fill(below | above, float("-inf"))


def check() -> None:
    """Each solution does what its exercise asks."""
    from unclip_repro.ar_prior import Quantizer, above_percentile

    g = torch.Generator().manual_seed(0)
    # Exercise 1: the ceiling rises with k and reaches 1 with every component
    z = F.normalize(torch.randn(2000, 16, generator=g) * torch.linspace(3, 0.1, 16) + 2, dim=-1)
    cosines = [truncated_cosine(z, k) for k in (1, 2, 4, 8, 16)]
    assert all(a <= b + 1e-9 for a, b in zip(cosines, cosines[1:], strict=False)), cosines
    assert abs(cosines[-1] - 1) < 1e-6 and cosines[0] < 0.99, cosines
    # Exercise 2: equal mass fills every bucket alike, uniform edges do not; both reconstruct
    x = torch.randn(4096, 1, generator=g, dtype=torch.float64)
    equal = Quantizer(1, 16)
    equal.fit(x)
    counts_equal = bucket_counts(x, equal.edges.double())
    edges, values = uniform_quantizer(x, 16)
    counts_uniform = bucket_counts(x, edges)
    assert counts_equal.sum() == counts_uniform.sum() == len(x)
    assert counts_equal.max() - counts_equal.min() <= 1, counts_equal
    assert counts_uniform.max() > 10 * counts_uniform.min().clamp(min=1), counts_uniform
    codes = torch.searchsorted(edges[0], x[:, 0].contiguous(), right=True)
    error = (values[0, codes] - x[:, 0]).pow(2).mean()
    assert error < 0.05 * x.var(), error  # 16 buckets: a few % of the variance
    # Exercise 3: the top half is the package's above_percentile; the bands pick their end
    logp = torch.randn(8, 64, generator=g).log_softmax(-1)
    for q in (0.0, 0.5, 0.9):
        assert torch.equal(dot_band(logp, q, 1.0).isinf(), above_percentile(logp, q).isinf())
    toy = torch.tensor([[0.05, 0.1, 0.2, 0.25, 0.2, 0.1, 0.05, 0.05]]).log()
    assert dot_band(toy, 0.0, 0.1).isfinite().int().tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]
    assert dot_band(toy, 0.9, 1.0).isfinite().int().tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]


if __name__ == "__main__":
    check()
    print("s04: all solutions check")
