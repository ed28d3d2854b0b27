"""Solutions to the exercises of notebook 01 (the diffusion core), checked by `check()`."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def x0_eps_from_x0(xt: Tensor, t: Tensor, out: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """Exercise 1: (x̂_0, ε̂) of an x_0-model: x̂_0 = out, ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)."""
    shape = (-1,) + (1,) * (xt.ndim - 1)  # (B, 1, …, 1) to broadcast against x_t (B, …)
    a = alpha_bar.sqrt()[t].to(xt.dtype).reshape(shape)  # √ᾱ_t, computed in float64 first
    b = (1 - alpha_bar).sqrt()[t].to(xt.dtype).reshape(shape)  # √(1 − ᾱ_t)
    return out, (xt - a * out) / b


def last_step_amplification(alpha_bar: Tensor) -> float:
    """Exercise 3: b/a = √(1 − ᾱ_{T−1}) / √ᾱ_{T−1}, the factor by which an ε-model's error
    grows in x̂_0 = (x_t − b ε̂) / a at the noisiest step."""
    return float(((1 - alpha_bar[-1]) / alpha_bar[-1]).sqrt())


def check() -> None:
    """Each solution does what its exercise asks (against the package's GaussianDiffusion)."""
    from unclip_repro.diffusion import GaussianDiffusion, cosine_betas, linear_betas

    T = 1000
    # Exercise 1: the x0 branch agrees with the package's "x0" parametrisation
    d = GaussianDiffusion(cosine_betas(T), "x0")
    xt, out = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, T - 1])
    x0_hat, eps_hat = x0_eps_from_x0(xt, t, out, d.alpha_bar)
    assert torch.equal(x0_hat, d.predict_x0(xt, t, out))
    assert torch.allclose(eps_hat, d.predict_eps(xt, t, out), atol=1e-5)
    # ... and is not hurt at the last step: an output error moves ε̂ by a/b ≈ 0 times as much
    x0_err, eps_err = x0_eps_from_x0(xt, t, out + 1e-2, d.alpha_bar)
    assert (eps_err - eps_hat)[-1].abs().max() < 1e-5  # t = T − 1
    assert torch.allclose(x0_err - x0_hat, torch.full_like(xt, 1e-2))

    # Exercise 3: the cosine schedule amplifies more than a hundred times more than the linear
    cos = last_step_amplification(d.alpha_bar)
    lin = last_step_amplification(GaussianDiffusion(linear_betas(T)).alpha_bar)
    assert 1e4 < cos < 1e5 and 100 < lin < 300 and cos > 100 * lin, (cos, lin)
    # it is what an ε-model's x̂_0 does to an output error at t = T − 1
    eps_model = GaussianDiffusion(cosine_betas(T), "eps")
    zero, last = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([T - 1])
    gap = eps_model.predict_x0(zero, last, zero + 1e-3) - eps_model.predict_x0(zero, last, zero)
    assert math.isclose(gap.abs().max().item() / 1e-3, cos, rel_tol=1e-6)
