"""Gaussian diffusion: schedules, forward process, posterior, losses, DDPM and DDIM samplers.

The math only, owning no weights (improved-diffusion's split): the same object serves the
diffusion prior (clean CLIP embeddings, (B, D)), the decoder and the upsamplers (images,
(B, C, H, W)). Every function works on any shape (B, ...).

Sources, cited by these short names in the comments:
  DDPM    Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239
  IDDPM   Nichol, Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", 2102.09672
  DDIM    Song, Meng, Ermon 2021, "Denoising Diffusion Implicit Models", arXiv 2010.02502
  PD      Salimans, Ho 2022, "Progressive Distillation for Fast Sampling...", arXiv 2202.00512
  CFG     Ho, Salimans 2022, "Classifier-Free Diffusion Guidance", arXiv 2207.12598
  unCLIP  Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation...", 2204.06125

Symbols -> names: β_t betas, α_t alphas, ᾱ_t alpha_bar, β̃_t beta_tilde, μ̃_t posterior mean,
ε eps, x̂_0 x0_hat, σ_t(η) sigma, and v (= √ᾱ_t ε − √(1 − ᾱ_t) x_0) v.
Timesteps are integer indices t = 0 … T−1 (the papers' t = 1 … T, shifted by one), t = 0 the
least noisy; sampling starts from x_T ~ N(0, I) fed in at t = T−1. The schedule lives in
float64 CPU tensors (as in improved-diffusion) and is cast to the input's dtype/device at use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

Prediction = Literal["eps", "x0", "v"]
ModelFn = Callable[[Tensor, Tensor], Tensor]  # model(x_t (B, ...), t (B,)) -> output (B, ...)


# ----------------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------------
def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_t of the cosine schedule (Eq. 17 of IDDPM), float64 of shape (T,)."""
    # ᾱ(t) = f(t) / f(0),  f(t) = cos²((t/T + s) / (1 + s) · π/2)              (Eq. 17 of IDDPM)
    # β_t = 1 − ᾱ(t+1) / ᾱ(t), clipped at 0.999 to avoid the singularity at t = T (§3.2 of IDDPM)
    u = torch.arange(T + 1, dtype=torch.float64, device="cpu") / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def linear_betas(T: int) -> Tensor:
    """β_t linear from 1e-4 to 0.02 (§4 of DDPM), rescaled by 1000/T as improved-diffusion does."""
    scale = 1000 / T  # keeps ᾱ_T ≈ 0 for T ≠ 1000
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64, device="cpu")


# ----------------------------------------------------------------------------------------------
# Named outputs
# ----------------------------------------------------------------------------------------------
class Posterior(NamedTuple):
    """q(x_{t−1} | x_t, x_0) = N(mean, variance · I) (Eq. 6–7 of DDPM); variance is (B, 1, …)."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor


class SamplerStep(NamedTuple):
    """One sampler step: its timestep t, the model's x̂_0 at t, and the sample x after the step."""

    t: int
    x0_hat: Tensor
    x: Tensor


# ----------------------------------------------------------------------------------------------
# The diffusion process
# ----------------------------------------------------------------------------------------------
class GaussianDiffusion:
    """A Gaussian diffusion with schedule `betas`; the network is passed to each method."""

    def __init__(self, betas: Tensor | np.ndarray, prediction: Prediction = "eps") -> None:
        with torch.device("cpu"):  # the schedule lives on the CPU even under a meta/cuda default
            self._init(betas, prediction)

    def _init(self, betas: Tensor | np.ndarray, prediction: Prediction) -> None:
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or len(betas) < 2 or not (0 < betas.min() and betas.max() <= 1):
            raise ValueError("betas must be a 1-D schedule of at least 2 values in (0, 1]")
        self.prediction: Prediction = prediction
        self.T = len(betas)
        self.betas = betas  # β_t, (T,)
        self.alphas = 1 - betas  # α_t
        self.alpha_bar = torch.cumprod(self.alphas, 0)  # ᾱ_t = Π_{s≤t} α_s (§2 of DDPM, Eq. 4)
        self.alpha_bar_prev = F.pad(self.alpha_bar[:-1], (1, 0), value=1.0)  # ᾱ_{t−1}, ᾱ_{−1} = 1
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1 - self.alpha_bar).sqrt()
        self.snr = self.alpha_bar / (1 - self.alpha_bar)  # signal-to-noise ratio ᾱ_t / (1 − ᾱ_t)
        # Posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I)                          (Eq. 6–7 of DDPM)
        #   β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
        #   μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
        self.beta_tilde = betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)
        # β̃_0 = 0: its log is clipped to log β̃_1, as improved-diffusion does
        self.log_beta_tilde = torch.cat([self.beta_tilde[1:2], self.beta_tilde[1:]]).log()
        self.posterior_coef_x0 = self.alpha_bar_prev.sqrt() * betas / (1 - self.alpha_bar)
        self.posterior_coef_xt = (
            self.alphas.sqrt() * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)
        )
        # ᾱ for t ∈ {−1, 0, …, T−1}, with ᾱ_{−1} = 1 (DDIM's α_0 := 1): index t + 1
        self._alpha_bar_from_minus1 = F.pad(self.alpha_bar, (1, 0), value=1.0)

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps (improved-diffusion's name for it)."""
        return self.T

    def __repr__(self) -> str:
        return f"GaussianDiffusion(T={self.T}, prediction={self.prediction!r})"

    # --- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _at(a: Tensor, t: Tensor | int, x: Tensor) -> Tensor:
        """a[t] in x's dtype/device, shaped (B, 1, …, 1) to broadcast against x (B, ...)."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return a[t].to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def timesteps(self, steps: int | Literal["all"] = "all", t_start: int | None = None) -> Tensor:
        """Sampling timesteps, noisiest first: all T (`"all"`), or `steps` evenly strided (§4 of
        IDDPM), from `t_start` (default T − 1) down to 0."""
        top = self.T - 1 if t_start is None else int(t_start)
        if not 0 <= top < self.T:
            raise ValueError(f"t_start must be in [0, {self.T - 1}], got {t_start}")
        if steps == "all" or (steps == self.T and top == self.T - 1):
            return torch.arange(top, -1, -1)
        if not 1 <= steps <= top + 1:
            raise ValueError(f"steps must be in [1, {top + 1}], got {steps}")
        if steps == 1:
            return torch.tensor([top])
        # "K evenly spaced real numbers between 1 and T, rounded" (§4 of IDDPM), as diffusers'
        # timestep_spacing="linspace": both ends included
        ts = np.linspace(0, top, steps).round()[::-1].astype(np.int64)
        return torch.from_numpy(ts.copy())

    def invertible_start(self, min_alpha_bar: float = 1e-3) -> int:
        """The noisiest t with ᾱ_t ≥ min_alpha_bar: where DDIM inversion should stop.

        Past it x_t = √ᾱ_t x_0 + … keeps so little of x_0 (the cosine schedule ends at
        ᾱ ≈ 2e−9) that sampling back must divide tiny differences by √ᾱ_t: float32 cannot
        reconstruct the image from there. Inverting to this t and sampling from it loses
        nothing the sampler would have used: x_t is still almost pure noise (√ᾱ ≈ 0.03).
        """
        return int((self.alpha_bar >= min_alpha_bar).nonzero().max())

    # --- forward process and posterior --------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Eq. 4 of DDPM); x0 (B, ...)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            self._at(self.sqrt_alpha_bar, t, x0) * x0
            + self._at(self.sqrt_one_minus_alpha_bar, t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> Posterior:
        """Mean and variance of q(x_{t−1} | x_t, x_0) (Eq. 6–7 of DDPM)."""
        mean = (
            self._at(self.posterior_coef_x0, t, xt) * x0
            + self._at(self.posterior_coef_xt, t, xt) * xt
        )
        return Posterior(
            mean, self._at(self.beta_tilde, t, xt), self._at(self.log_beta_tilde, t, xt)
        )

    # --- the three parametrisations -----------------------------------------------------------
    # x_t = a x_0 + b ε with a = √ᾱ_t, b = √(1 − ᾱ_t), and v = a ε − b x_0 (§4 of PD), so
    #   x_0 = (x_t − b ε) / a   (Eq. 15 of DDPM, Eq. 9 of DDIM)    ε = (x_t − a x_0) / b
    #   x_0 = a x_t − b v        ε = b x_t + a v                     (§4 and App. D of PD)
    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The regression target of the configured parametrisation: ε, x_0 or v."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a, b = self._at(self.sqrt_alpha_bar, t, x0), self._at(self.sqrt_one_minus_alpha_bar, t, x0)
        return a * noise - b * x0

    def predict_x0(self, xt: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """x̂_0 from the model output (ε, x_0 or v) at (x_t, t)."""
        if self.prediction == "x0":
            return model_output
        a, b = self._at(self.sqrt_alpha_bar, t, xt), self._at(self.sqrt_one_minus_alpha_bar, t, xt)
        if self.prediction == "eps":
            return (xt - b * model_output) / a
        return a * xt - b * model_output

    def predict_eps(self, xt: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """ε̂ from the model output (ε, x_0 or v) at (x_t, t)."""
        if self.prediction == "eps":
            return model_output
        a, b = self._at(self.sqrt_alpha_bar, t, xt), self._at(self.sqrt_one_minus_alpha_bar, t, xt)
        if self.prediction == "x0":
            return (xt - a * model_output) / b
        return b * xt + a * model_output

    def output_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """The model output whose `predict_x0` is x0: x0 written in this parametrisation."""
        if self.prediction == "x0":
            return x0
        a, b = self._at(self.sqrt_alpha_bar, t, xt), self._at(self.sqrt_one_minus_alpha_bar, t, xt)
        return self.target(x0, t, (xt - a * x0) / b)

    def _x0_eps(
        self, xt: Tensor, t: Tensor, model_output: Tensor, clip_x0: tuple[float, float] | None
    ) -> tuple[Tensor, Tensor]:
        """x̂_0 (clipped to clip_x0 if given) and the ε̂ consistent with it, as improved-diffusion."""
        x0_hat = self.predict_x0(xt, t, model_output)
        if clip_x0 is None:
            return x0_hat, self.predict_eps(xt, t, model_output)
        x0_hat = x0_hat.clamp(*clip_x0)
        a, b = self._at(self.sqrt_alpha_bar, t, xt), self._at(self.sqrt_one_minus_alpha_bar, t, xt)
        return x0_hat, (xt - a * x0_hat) / b

    # --- training -----------------------------------------------------------------------------
    def training_loss(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        reduction: Literal["mean", "none"] = "mean",
    ) -> Tensor:
        """MSE of model(x_t, t, **model_kwargs) to the target (Eq. 14 of DDPM); t ~ U{0..T−1}."""
        if t is None:
            t = torch.randint(0, self.T, (x0.shape[0],), device=x0.device)  # (B,)
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t, **(model_kwargs or {}))
        # unCLIP's prior regresses x_0 the same way: ‖f(z_t, t, y) − z_i‖² (§2.2 of unCLIP)
        per_sample = (out.float() - self.target(x0, t, noise).float()).pow(2).flatten(1).mean(1)
        return per_sample.mean() if reduction == "mean" else per_sample  # () or (B,)

    # --- one reverse step ---------------------------------------------------------------------
    def ddpm_step(
        self,
        xt: Tensor,
        model_output: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        clip_x0: tuple[float, float] | None = None,
    ) -> Tensor:
        """Ancestral step x_t -> x_{t−1} ~ N(μ̃_t(x̂_0, x_t), β̃_t I) (Eq. 6–7, Alg. 2 of DDPM)."""
        return self._ddpm_from(xt, self._x0_eps(xt, t, model_output, clip_x0)[0], t, noise)

    def _ddpm_from(self, xt: Tensor, x0_hat: Tensor, t: Tensor, noise: Tensor | None) -> Tensor:
        """`ddpm_step` given x̂_0."""
        mean, _, log_variance = self.q_posterior(x0_hat, xt, t)
        if noise is None:
            noise = torch.randn_like(xt)
        t = torch.as_tensor(t, device=xt.device).expand(xt.shape[0])
        nonzero = (t != 0).to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))  # no noise at t = 0
        return mean + nonzero * (0.5 * log_variance).exp() * noise

    def ddim_step(
        self,
        xt: Tensor,
        model_output: Tensor,
        t: Tensor,
        t_prev: Tensor | int,
        eta: float = 0.0,
        noise: Tensor | None = None,
        clip_x0: tuple[float, float] | None = None,
    ) -> Tensor:
        """DDIM step x_t -> x_{t_prev} (Eq. 12 of DDIM, σ from Eq. 16); t_prev = −1 steps to x_0."""
        x0_hat, eps_hat = self._x0_eps(xt, t, model_output, clip_x0)
        return self._ddim_from(xt, x0_hat, eps_hat, t, t_prev, eta, noise)

    def _ddim_from(
        self, xt: Tensor, x0_hat: Tensor, eps_hat: Tensor, t: Tensor, t_prev: Tensor | int,
        eta: float, noise: Tensor | None,
    ) -> Tensor:  # fmt: skip
        """`ddim_step` given x̂_0 and ε̂."""
        ab = self._at(self._alpha_bar_from_minus1, torch.as_tensor(t) + 1, xt)  # ᾱ_t
        ab_prev = self._at(self._alpha_bar_from_minus1, torch.as_tensor(t_prev) + 1, xt)
        # σ_t(η) = η √((1 − ᾱ_prev) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_prev)                (Eq. 16 of DDIM)
        # η = 1 is the ancestral step of the respaced chain (§4 of IDDPM); η = 0 is deterministic
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        # x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z                         (Eq. 12 of DDIM)
        x_prev = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps_hat
        if eta > 0:
            x_prev = x_prev + sigma * (torch.randn_like(xt) if noise is None else noise)
        return x_prev

    # --- samplers -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_progressive(
        self,
        model: ModelFn,
        shape: tuple[int, ...],
        steps: int | Literal["all"] = "all",
        eta: float = 1.0,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_x0: tuple[float, float] | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        t_start: int | None = None,
    ) -> Iterator[SamplerStep]:
        """Like `sample`, yielding a `SamplerStep` after every step (for trajectories)."""
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)  # x_T
        x = noise
        ts = self.timesteps(steps, t_start).tolist()  # noisiest first
        ancestral = steps == "all"  # DDPM posterior steps; else DDIM(η) steps
        for i, t in enumerate(tqdm(ts, disable=not progress, desc="sampling", leave=False)):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
            out = model(x, tt)
            z = None
            if ancestral or eta > 0:  # one draw per step, the last included, for both paths
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x0_hat, eps_hat = self._x0_eps(x, tt, out, clip_x0)  # once a step, for both uses
            if ancestral:
                x = self._ddpm_from(x, x0_hat, tt, z)
            else:
                x = self._ddim_from(x, x0_hat, eps_hat, tt, t_prev, eta, z)
            yield SamplerStep(t, x0_hat, x)

    def sample(
        self,
        model: ModelFn,
        shape: tuple[int, ...],
        steps: int | Literal["all"] = "all",
        eta: float = 1.0,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_x0: tuple[float, float] | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        t_start: int | None = None,
    ) -> Tensor:
        """Draw x_0 of `shape`: DDPM ancestral over all T steps (`steps="all"`), or DDIM(η) strided.

        `model(x_t, t)` returns the configured parametrisation; `noise` is x_T; `eta` applies to
        strided sampling only (steps = k: η = 1 strided ancestral, η = 0 deterministic DDIM).
        `t_start` starts the chain below T − 1 (from an inverted latent, `ddim_invert`).
        """
        x = noise
        for step in self.sample_progressive(
            model, shape, steps, eta, noise, generator, clip_x0, progress, device, dtype, t_start
        ):
            x = step.x
        return x

    @torch.no_grad()
    def ddim_invert(
        self,
        model: ModelFn,
        x0: Tensor,
        steps: int | Literal["all"] = "all",
        progress: bool = False,
        refine: int = 10,
        tol: float = 1e-6,
        t_start: int | None = None,
    ) -> Tensor:
        """Run deterministic DDIM (η = 0) backwards, x_0 -> x_T (§4.3 of DDIM; §3 of unCLIP).

        Each step solves Eq. 12 of DDIM (σ = 0) for x_t given x_{t_prev}:
            x_t = √ᾱ_t (x_{t_prev} − √(1 − ᾱ_{t_prev}) ε̂) / √ᾱ_{t_prev} + √(1 − ᾱ_t) ε̂,
        with ε̂ = ε_θ(x_t, t) — which depends on the unknown x_t. The classic inversion
        evaluates ε̂ at x_{t_prev} instead (`refine=0`), an error of first order in the step
        that the last steps amplify by 1/√ᾱ_t (ᾱ_{T−1} ≈ 2e−9 for the cosine schedule), so
        sampling back does not return the image. Up to `refine` fixed-point iterations
        x_t ← f(ε_θ(x_t, t)) make each step the exact inverse of the sampler's step
        (as Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative
        Diffusion Inversion", do); they stop once x_t moves by less than `tol`. Invert to
        `t_start = invertible_start()`, not to T − 1, and sample back from there.
        """
        x, t_prev = x0, -1
        ts = self.timesteps(steps, t_start).flip(0).tolist()  # least noisy first
        for t in tqdm(ts, disable=not progress, leave=False):
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
            ab = self._at(self._alpha_bar_from_minus1, t + 1, x)  # ᾱ_t
            ab_prev = self._at(self._alpha_bar_from_minus1, t_prev + 1, x)  # ᾱ_{t_prev}

            # the step above as x_t = c_x x_{t_prev} + c_ε ε̂
            c_x = (ab / ab_prev).sqrt()
            c_eps = (1 - ab).sqrt() - (ab * (1 - ab_prev) / ab_prev).sqrt()
            x_t = c_x * x + c_eps * self.predict_eps(x, tt, model(x, tt))  # ε̂ at x_{t_prev}
            for _ in range(refine):
                x_new = c_x * x + c_eps * self.predict_eps(x_t, tt, model(x_t, tt))
                done = (x_new - x_t).abs().max() < tol
                x_t = x_new
                if done:
                    break
            x, t_prev = x_t, t
        return x


# ----------------------------------------------------------------------------------------------
# Timestep embedding (shared by the prior, the decoder and the upsamplers)
# ----------------------------------------------------------------------------------------------
def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of integer timesteps t (B,) -> (B, dim) (§3.5 of Vaswani et al. 2017,
    as DDPM's U-Net uses them): [cos(t ω_k), sin(t ω_k)] with ω_k = max_period^(−k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, 2·(dim/2))
    return F.pad(emb, (0, dim % 2))  # (B, dim)


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance
# ----------------------------------------------------------------------------------------------
def classifier_free_guidance(out_cond: Tensor, out_uncond: Tensor, scale: float) -> Tensor:
    """out_uncond + scale · (out_cond − out_uncond) (Eq. 6 of CFG with scale = 1 + w); 1 = none."""
    # Affine in the output, so guiding ε, x_0 or v gives the same x̂_0 (unCLIP guides x_0 for
    # the prior and ε for the decoder, §2.1–2.2 of unCLIP).
    return out_uncond + scale * (out_cond - out_uncond)


def _cat_batch(a: Any, b: Any) -> Any:
    """Concatenate two conditionings (tensors, or dicts/tuples/lists of them) along the batch."""
    if a is None:
        return None
    if isinstance(a, Tensor):
        return torch.cat([a, b])
    if isinstance(a, Mapping):
        return {k: _cat_batch(a[k], b[k]) for k in a}
    if isinstance(a, tuple | list):
        return type(a)(_cat_batch(x, y) for x, y in zip(a, b, strict=True))
    raise TypeError(f"cannot batch a conditioning of type {type(a).__name__}")


def guided(
    model_fn: Callable[[Tensor, Tensor, Any], Tensor], cond: Any, uncond: Any, scale: float
) -> ModelFn:
    """Bind conditioning to model_fn(x_t, t, cond) as a guided model(x_t, t) for `sample`."""
    if scale == 1.0:
        return lambda xt, t: model_fn(xt, t, cond)
    both = _cat_batch(cond, uncond)  # (2B, ...): conditional half first

    def model(xt: Tensor, t: Tensor) -> Tensor:
        out = model_fn(torch.cat([xt, xt]), torch.cat([t, t]), both)  # (2B, ...)
        out_cond, out_uncond = out.chunk(2)
        return classifier_free_guidance(out_cond, out_uncond, scale)

    return model


# ----------------------------------------------------------------------------------------------
# The ideal denoiser of a finite training set (a teaching device)
# ----------------------------------------------------------------------------------------------
def ideal_denoiser(diffusion: GaussianDiffusion, data: Tensor) -> ModelFn:
    """The exact optimal model when the data are the N points `data` (N, ...): it memorises them."""
    flat = data.flatten(1).double()  # (N, D), float64: the logits below are large near t = 0
    sq_norms = flat.pow(2).sum(1)  # (N,)

    def model(xt: Tensor, t: Tensor) -> Tensor:
        x = xt.flatten(1).to(device=flat.device, dtype=torch.float64)  # (B, D)
        a = diffusion._at(diffusion.sqrt_alpha_bar, t, x)  # √ᾱ_t, (B, 1)
        var = diffusion._at(1 - diffusion.alpha_bar, t, x)  # 1 − ᾱ_t, (B, 1)
        # p(x_0 = x_n | x_t) ∝ exp(−‖x_t − √ᾱ_t x_n‖² / (2(1 − ᾱ_t))); ‖x_t‖² cancels in the softmax
        logits = (a * (x @ flat.T) - a**2 * sq_norms / 2) / var  # (B, N)
        x0 = (logits.softmax(1) @ flat).reshape(xt.shape).to(xt)  # E[x_0 | x_t], (B, ...)
        return diffusion.output_from_x0(xt, t, x0)

    return model
