"""Solutions to notebook 03's exercises (the diffusion prior).

The network `f` is any callable with the notebook's signature
f(x_t (B, D), t (B,), tokens (B, L, W), mask (B, L), z_t (B, D), drop (B,)) -> (B, D):
the notebook's own `Prior`, or the package's `DiffusionPrior.denoise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from unclip_repro.diffusion import GaussianDiffusion, cosine_betas


def prior_loss(
    f: Callable[..., Tensor],
    diffusion: GaussianDiffusion,
    batch: dict[str, Tensor],
    generator: torch.Generator | None = None,
    text_drop: float = 0.1,
) -> Tensor:
    """Exercise 1: the prior's loss for any parametrisation of `diffusion` ("x0", "eps", "v").

    The network regresses `diffusion.target(x_0, t, ε)`: x_0 = c z_i for unCLIP's prior
    (§2.2 of unCLIP), ε for the DDPM loss (Eq. 14 of DDPM).
    """
    z_i = batch["z_i"]
    B, D = z_i.shape
    x0 = math.sqrt(D) * z_i  # c z_i, unit-variance components
    t = torch.randint(diffusion.T, (B,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = diffusion.q_sample(x0, t, eps)
    drop = torch.rand(B, generator=generator) < text_drop
    out = f(x_t, t, batch["tokens"], batch["mask"], batch["z_t"], drop)
    return (out - diffusion.target(x0, t, eps)).pow(2).mean()


def train_prior(
    f: torch.nn.Module,
    data: dict[str, Tensor],
    prediction: str = "x0",
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Exercise 1: train `f` to predict `prediction` (x0 or eps) on the cached pairs `data`;
    returns the losses. The same loop as the notebook's, with the target as a parameter."""
    diffusion = GaussianDiffusion(cosine_betas(1000), prediction=prediction)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(f.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(data["z_i"]), (batch_size,), generator=g)
        loss = prior_loss(f, diffusion, {k: v[idx] for k, v in data.items()}, g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(f.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def diversity(z: Tensor) -> float:
    """Exercise 2: mean cosine between different samples of the same caption; z (B, n, D)
    unit-norm, n >= 2 samples per caption. 1: all samples alike; lower: more diverse."""
    n = z.shape[1]
    gram = z @ z.transpose(1, 2)  # (B, n, n)
    off = ~torch.eye(n, dtype=torch.bool)
    return gram[:, off].mean().item()


def blocked(keep: Tensor, causal: bool = True) -> Tensor:
    """Exercise 3: (B, S, S) True where query i may not attend to key j. Padding keys are
    always blocked; with `causal`, so is every later key j > i."""
    S = keep.shape[1]
    padding = ~keep[:, None, :]  # (B, 1, S)
    if not causal:
        return padding.expand(-1, S, -1)
    future = torch.ones(S, S, dtype=torch.bool).triu(1)  # (S, S)
    return future[None] | padding


class _Denoiser(torch.nn.Module):
    """The package's prior called as the notebook's network: forward is its `denoise`."""

    def __init__(self, prior: torch.nn.Module):
        super().__init__()
        self.prior = prior

    def forward(self, *args: Tensor) -> Tensor:
        return self.prior.denoise(*args)


def check() -> None:
    """Each solution does what its exercise asks (CPU seconds, no CLIP needed)."""
    from unclip_repro.prior import DiffusionPrior, PriorConfig
    from unclip_repro.sequence import CausalTransformer

    torch.manual_seed(0)
    keep = torch.tensor([[True, True, False, True], [True, True, True, True]])
    assert torch.equal(blocked(keep), CausalTransformer.blocked(keep))
    open_ = blocked(keep, causal=False)
    assert not open_[:, :, [0, 1, 3]].any() and open_[0, :, 2].all()  # only padding blocked

    z = F.normalize(torch.randn(3, 4, 8), dim=-1)
    assert abs(diversity(z[:, :1].expand(-1, 4, -1)) - 1) < 1e-6  # identical samples
    assert diversity(torch.eye(4).expand(2, 4, 4)) == 0.0  # orthogonal samples

    # the loss regresses the chosen target: for each parametrisation, the package's loss
    prior = DiffusionPrior(PriorConfig(width=32, layers=1, heads=2), 8, 16, 6)
    data = {
        "tokens": torch.randn(64, 6, 16),
        "mask": torch.ones(64, 6, dtype=torch.bool),
        "z_t": F.normalize(torch.randn(64, 8), dim=-1),
    }
    data["z_i"] = F.normalize(data["z_t"] + 0.3 * torch.randn(64, 8), dim=-1)
    for prediction in ("x0", "eps"):
        d = GaussianDiffusion(cosine_betas(1000), prediction=prediction)
        ours = prior_loss(prior.denoise, d, data, torch.Generator().manual_seed(1), 0.0)
        g = torch.Generator().manual_seed(1)
        t = torch.randint(1000, (64,), generator=g)
        noise = torch.randn(64, 8, generator=g)
        kw = {k: data[k] for k in ("tokens", "mask", "z_t")}
        ref = d.training_loss(prior.denoise, 8**0.5 * data["z_i"], t, noise, kw)
        assert torch.allclose(ours, ref), prediction
    # and training with it learns (the loss falls), for both targets
    for prediction in ("x0", "eps"):
        torch.manual_seed(0)
        f = _Denoiser(DiffusionPrior(PriorConfig(width=32, layers=1, heads=2), 8, 16, 6))
        losses = train_prior(f, data, prediction, steps=60, batch_size=32)
        assert sum(losses[-10:]) < sum(losses[:10]), prediction
