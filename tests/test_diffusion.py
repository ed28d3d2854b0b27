"""Tests for unclip_repro.diffusion, in layers.

1. closed forms at fixed t (schedules, posterior, forward-process statistics, parametrisations);
2. reference equivalence with diffusers' DDPMScheduler / DDIMScheduler (test-only dependency);
3. behaviour with an exact denoiser: for Gaussian data the optimal ε / x_0 / v are closed
   form, so every sampler must produce the data's mean and std;
4. DDIM inversion, guidance, the training loss, the ideal denoiser of a finite set;
5. seeded regressions.
"""

import math

import numpy as np
import pytest
import torch

from unclip_repro.diffusion import (
    GaussianDiffusion,
    classifier_free_guidance,
    cosine_betas,
    guided,
    ideal_denoiser,
    linear_betas,
)

PREDICTIONS = ["eps", "x0", "v"]
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def _ab(d: GaussianDiffusion, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1 − ᾱ_t)) as float32 columns, computed here independently of the package."""
    alpha_bar = d.alpha_bar[t].float().reshape(-1, *([1] * (ndim - 1)))
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def gaussian_denoiser(d: GaussianDiffusion, mu: torch.Tensor, s: torch.Tensor):
    """The exact optimal model output when x_0 ~ N(mu, diag(s²)), in d's parametrisation."""

    def model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = _ab(d, t, xt.ndim)
        den = a**2 * s**2 + b**2  # Var[x_t] per dimension
        x0 = mu + a * s**2 / den * (xt - a * mu)  # E[x_0 | x_t]
        eps = b * (xt - a * mu) / den  # E[ε | x_t]
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[d.prediction]

    return model


# 1. closed forms ---------------------------------------------------------------------------------
def test_cosine_alpha_bar_matches_eq17():
    T, s = 1000, 0.008
    d = GaussianDiffusion(cosine_betas(T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in [0, 1, 10, 100, 500, 900, 990]:  # ᾱ_t = f(t + 1) / f(0) with 0-based t (no clipping)
        assert d.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert d.betas.dtype == torch.float64 and d.betas.max().item() == pytest.approx(0.999)
    assert d.alpha_bar[-1] < 1e-8  # x_T is pure noise


def test_linear_betas_endpoints_and_rescaling():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    b = linear_betas(250)  # scaled by 1000 / T
    assert b[0].item() == pytest.approx(4e-4) and b[-1].item() == pytest.approx(0.08)
    assert GaussianDiffusion(b).alpha_bar[-1] < 1e-4


@pytest.mark.parametrize("schedule", [cosine_betas, linear_betas])
def test_posterior_closed_form(schedule):
    d = GaussianDiffusion(schedule(200))
    torch.manual_seed(0)
    x0, xt = torch.randn(3, 5), torch.randn(3, 5)
    for t_ in [0, 1, 50, 199]:
        beta = d.betas[t_].item()
        ab, ab_prev = d.alpha_bar[t_].item(), (d.alpha_bar[t_ - 1].item() if t_ > 0 else 1.0)
        mean, var, log_var = d.q_posterior(x0, xt, torch.full((3,), t_))
        # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); μ̃_t from Eq. 7 of DDPM
        beta_tilde = beta * (1 - ab_prev) / (1 - ab)
        mu = ab_prev**0.5 * beta / (1 - ab) * x0 + (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab) * xt
        assert var.shape == (3, 1) and var[0].item() == pytest.approx(beta_tilde, rel=1e-6, abs=0)
        torch.testing.assert_close(mean, mu, rtol=1e-5, atol=1e-6)
        if t_ > 0:
            assert log_var[0].item() == pytest.approx(math.log(beta_tilde), rel=1e-6)
    assert d.beta_tilde[0] == 0 and d.log_beta_tilde[0] == d.log_beta_tilde[1]  # clipped log


def test_q_sample_statistics():
    d = GaussianDiffusion(cosine_betas(1000))
    torch.manual_seed(0)
    n = 20000
    x0 = torch.full((n, 2), 0.7)
    for t_ in [10, 400, 800]:
        xt = d.q_sample(x0, torch.full((n,), t_))
        ab = d.alpha_bar[t_].item()
        se = math.sqrt((1 - ab) / (2 * n))  # standard error of the mean, pooled over 2 dims
        assert abs(xt.mean().item() - ab**0.5 * 0.7) < 5 * se
        assert xt.var().item() == pytest.approx(1 - ab, rel=5 * math.sqrt(2 / (2 * n)))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_parametrisations_round_trip(prediction):
    d = GaussianDiffusion(cosine_betas(1000), prediction)
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)  # works for images (B, C, H, W)
    t = torch.tensor([0, 10, 500, 900])
    xt = d.q_sample(x0, t, eps)
    a, b = _ab(d, t, 4)
    expected = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]  # v: §4 of PD
    target = d.target(x0, t, eps)
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(d.predict_x0(xt, t, target), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(d.predict_eps(xt, t, target), eps, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(d.output_from_x0(xt, t, x0), target, atol=2e-4, rtol=1e-4)


def test_timesteps():
    d = GaussianDiffusion(cosine_betas(1000))
    assert d.timesteps().tolist() == list(range(999, -1, -1))
    ts = d.timesteps(64)
    assert len(ts) == 64 and ts[0] == 999 and ts[-1] == 0 and (ts.diff() < 0).all()
    assert d.timesteps(1).tolist() == [999]


# 2. reference equivalence with diffusers ---------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _float64_schedule(ref, betas: torch.Tensor):
    """Give a diffusers scheduler our ᾱ in float64, so that step comparisons test the formulas.

    diffusers keeps its schedule in float32, where 1 − ᾱ_t loses about three digits at small t
    (β̃_1 is off by 2e-4 relative); the float32 schedules are compared on their own below.
    """
    ref.alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ref


def test_schedules_match_diffusers(diffusers):
    ddpm = diffusers.DDPMScheduler(1000, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(cosine_betas(1000).float(), ddpm.betas)
    ddpm = diffusers.DDPMScheduler(1000, beta_schedule="linear")
    torch.testing.assert_close(linear_betas(1000).float(), ddpm.betas)
    d = GaussianDiffusion(linear_betas(1000))
    torch.testing.assert_close(d.alpha_bar.float(), ddpm.alphas_cumprod, rtol=1e-5, atol=1e-7)
    for t in [1, 10, 100, 500, 999]:  # posterior variance β̃_t, float32 precision in diffusers
        assert d.beta_tilde[t].item() == pytest.approx(ddpm._get_variance(t).item(), rel=1e-3)
    torch.manual_seed(0)
    x0, eps, t = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 300, 900])
    torch.testing.assert_close(d.q_sample(x0, t, eps), ddpm.add_noise(x0, eps, t))
    torch.testing.assert_close(
        GaussianDiffusion(linear_betas(1000), "v").target(x0, t, eps), ddpm.get_velocity(x0, eps, t)
    )


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm_step_matches_diffusers(diffusers, prediction):
    betas = cosine_betas(1000)
    d = GaussianDiffusion(betas, prediction)
    ref = diffusers.DDPMScheduler(
        1000,
        trained_betas=betas.numpy(),
        variance_type="fixed_small",
        clip_sample=False,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
    )
    ref = _float64_schedule(ref, betas)
    torch.manual_seed(0)
    xt, out = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    for t_ in [0, 1, 10, 300, 900, 999]:  # one ancestral step, same noise (Eq. 6–7 of DDPM)
        gen = torch.Generator().manual_seed(t_)
        expected = ref.step(out, t_, xt, generator=gen).prev_sample
        z = torch.randn(3, 4, generator=torch.Generator().manual_seed(t_), dtype=torch.float64)
        got = d.ddpm_step(xt, out, torch.full((3,), t_), noise=z)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_strided_ancestral_step_matches_diffusers_respaced_ddpm(diffusers, prediction):
    """DDIM with η = 1 on the strided grid is DDPM on the respaced chain (§4 of IDDPM)."""
    betas = linear_betas(1000)
    d = GaussianDiffusion(betas, prediction)
    ref = diffusers.DDPMScheduler(
        1000,
        trained_betas=betas.numpy(),
        clip_sample=False,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing="linspace",
    )
    ref = _float64_schedule(ref, betas)
    ref.set_timesteps(25)
    ts = d.timesteps(25)
    assert ts.tolist() == ref.timesteps.tolist()
    torch.manual_seed(0)
    shape = (2, 3, 4, 4)  # images
    xt, out = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    for i, t_ in enumerate(ts.tolist()):
        t_prev = ts[i + 1].item() if i + 1 < len(ts) else -1
        expected = ref.step(out, t_, xt, generator=torch.Generator().manual_seed(i)).prev_sample
        z = torch.randn(shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        got = d.ddim_step(xt, out, torch.full((2,), t_), t_prev, eta=1.0, noise=z)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(diffusers, prediction, eta):
    betas = cosine_betas(1000)
    d = GaussianDiffusion(betas, prediction)
    ref = diffusers.DDIMScheduler(
        1000,
        trained_betas=betas.numpy(),
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
    )
    ref = _float64_schedule(ref, betas)
    ref.set_timesteps(20)
    torch.manual_seed(0)
    xt, out, z = (torch.randn(2, 6, dtype=torch.float64) for _ in range(3))
    for t_ in ref.timesteps.tolist():  # leading spacing: 950, 900, ..., 0
        t_prev = max(t_ - 1000 // 20, -1)  # -1: the last step, to x_0 (ᾱ_{-1} = 1)
        expected = ref.step(out, t_, xt, eta=eta, variance_noise=z).prev_sample
        got = d.ddim_step(xt, out, torch.full((2,), t_), t_prev, eta=eta, noise=z)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# 3. behaviour with an exact denoiser -------------------------------------------------------------
MU = torch.tensor([1.0, -0.5, 0.0, 0.25])
S = torch.tensor([0.5, 1.0, 0.75, 1.25])


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize(
    "steps, eta, shrink",
    [("all", 1.0, 0.01), (250, 1.0, 0.02), (100, 0.0, 0.02)],
    ids=["ddpm-all-steps", "strided-ancestral-250", "ddim-100"],
)
def test_samplers_reproduce_gaussian_data(prediction, steps, eta, shrink):
    """x_0 ~ N(MU, S²) and the exact denoiser: samples have mean MU and std S.

    Tolerance: 4 standard errors for n = B·D standardised values, plus a one-sided `shrink`
    allowance for the samplers' known O(1/steps) variance loss (β̃ omits Var[x_0 | x_t];
    DDIM is an Euler step), about 0.3% for 1000 ancestral steps and 1.5% for 250 or 100.
    """
    d = GaussianDiffusion(cosine_betas(1000), prediction)
    B = 4000
    x = d.sample(
        gaussian_denoiser(d, MU, S), (B, 4), steps, eta, generator=torch.Generator().manual_seed(0)
    )
    z = (x - MU) / S  # should be N(0, 1), (B, 4)
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert -4 * math.sqrt(1 / (2 * n)) - shrink < z.std().item() - 1 < 4 * math.sqrt(1 / (2 * n))
    # each dimension separately (its own std; 4 standard errors)
    torch.testing.assert_close(x.mean(0), MU, atol=4 * S.max().item() / math.sqrt(B), rtol=0)


def test_parametrisations_sample_the_same_path():
    """The same exact denoiser written as ε, x_0 or v gives the same samples, step by step."""
    xs = []
    for prediction in PREDICTIONS:
        d = GaussianDiffusion(cosine_betas(1000), prediction)
        model = gaussian_denoiser(d, MU, S)
        xs.append(d.sample(model, (64, 4), 20, 0.7, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(xs[0], xs[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(xs[0], xs[2], atol=1e-4, rtol=1e-4)


def test_ddpm_is_ddim_eta1_on_all_steps():
    d = GaussianDiffusion(cosine_betas(100))
    model = gaussian_denoiser(d, MU, S)
    a = d.sample(model, (16, 4), "all", generator=torch.Generator().manual_seed(0))
    b = d.sample(model, (16, 4), 100, 1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ddim_eta0_is_deterministic_and_progressive_matches_sample():
    d = GaussianDiffusion(cosine_betas(100), "v")
    model = gaussian_denoiser(d, MU, S)
    noise = torch.randn(8, 4)
    a = d.sample(model, (8, 4), 10, 0.0, noise=noise, generator=torch.Generator().manual_seed(0))
    b = d.sample(model, (8, 4), 10, 0.0, noise=noise, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    steps = list(d.sample_progressive(model, (8, 4), 10, 0.0, noise=noise))
    assert [s.t for s in steps] == d.timesteps(10).tolist()
    torch.testing.assert_close(steps[-1].x, a, atol=0, rtol=0)
    torch.testing.assert_close(steps[-1].x0_hat, a)  # the last step lands on x̂_0


def test_clip_x0_bounds_the_samples():
    d = GaussianDiffusion(cosine_betas(100), "x0")
    wild = lambda xt, t: 10 * torch.ones_like(xt)  # predicts x_0 far outside [-1, 1]
    for steps, eta in [("all", 1.0), (10, 0.0)]:
        x = d.sample(wild, (4, 3, 4, 4), steps, eta, clip_x0=(-1.0, 1.0))
        torch.testing.assert_close(x, torch.ones_like(x))


# 4. DDIM inversion, guidance, loss, ideal denoiser -----------------------------------------------
def test_ddim_inversion_round_trip():
    """Invert x_0 -> x_T, then sample with η = 0: x_0 comes back, with first-order error."""
    d = GaussianDiffusion(cosine_betas(1000), "eps")
    model = gaussian_denoiser(d, MU, S)
    x0 = MU + S * torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    errors = {}
    for k in [100, 200]:
        xT = d.ddim_invert(model, x0, k, refine=0)  # the classic, approximate inversion
        # for Gaussian data the probability-flow ODE maps x_0 to (x_0 − MU) / S
        torch.testing.assert_close(xT, (x0 - MU) / S, atol=0.15, rtol=0)
        x0_back = d.sample(model, x0.shape, k, eta=0.0, noise=xT)
        errors[k] = (x0_back - x0).abs().mean().item()
    assert errors[200] < 0.02
    assert 0.4 < errors[200] / errors[100] < 0.6  # halving the step halves the error


def test_refined_ddim_inversion_is_the_exact_inverse_of_the_sampler():
    """With fixed-point refinement, sampling back returns x_0 even for a model that is not a
    true denoiser, where the classic inversion fails (the last steps amplify its error)."""
    d = GaussianDiffusion(cosine_betas(1000), "eps")
    weight = torch.randn(12, 12, generator=torch.Generator().manual_seed(0)) * 0.1
    model = lambda x, t: 0.5 * torch.tanh(x.flatten(1) @ weight).view_as(x)  # noqa: E731
    x0 = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.6
    exact = d.sample(model, x0.shape, 20, eta=0.0, noise=d.ddim_invert(model, x0, 20))
    classic = d.sample(model, x0.shape, 20, eta=0.0, noise=d.ddim_invert(model, x0, 20, refine=0))
    assert (exact - x0).abs().max() < 1e-2  # float32 through the last steps' 1/√ᾱ ≈ 2e4
    assert (classic - x0).abs().mean() > 1.0


def test_guidance_formula():
    c, u = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(classifier_free_guidance(c, u, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(c, u, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(c, u, 3.0), u + 3.0 * (c - u))
    torch.testing.assert_close(
        classifier_free_guidance(c, u, 3.0), 3.0 * c - 2.0 * u
    )  # (1+w)c − wu


@pytest.mark.parametrize("as_dict", [False, True])
def test_guided_model_runs_one_doubled_batch(as_dict):
    calls = []
    weight = torch.randn(4, 4)

    def model_fn(xt, t, cond):
        calls.append(xt.shape[0])
        c = cond["z"] if as_dict else cond
        return xt @ weight + c * t[:, None].float()

    x, t = torch.randn(3, 4), torch.tensor([5, 6, 7])
    cond, uncond = torch.randn(3, 4), torch.zeros(3, 4)
    if as_dict:
        cond, uncond = {"z": cond}, {"z": uncond}
    out_c, out_u = model_fn(x, t, cond), model_fn(x, t, uncond)
    calls.clear()
    torch.testing.assert_close(guided(model_fn, cond, uncond, 1.0)(x, t), out_c)
    assert calls == [3]  # scale 1: the unconditional pass is skipped
    got = guided(model_fn, cond, uncond, 4.0)(x, t)
    torch.testing.assert_close(got, classifier_free_guidance(out_c, out_u, 4.0))
    assert calls == [3, 6]  # one doubled batch


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_guidance_commutes_with_parametrisation(prediction):
    """Guiding ε, x_0 or v gives the same x̂_0: the conversions are affine in the output."""
    d = GaussianDiffusion(cosine_betas(1000), prediction)
    xt, c, u, t = (
        torch.randn(4, 6),
        torch.randn(4, 6),
        torch.randn(4, 6),
        torch.tensor([5, 50, 500, 950]),
    )
    lhs = d.predict_x0(xt, t, classifier_free_guidance(c, u, 2.5))
    rhs = classifier_free_guidance(d.predict_x0(xt, t, c), d.predict_x0(xt, t, u), 2.5)
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss(prediction):
    d = GaussianDiffusion(cosine_betas(1000), prediction)
    torch.manual_seed(0)
    x0, noise, t = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4), torch.randint(0, 1000, (6,))
    target = d.target(x0, t, noise)
    perfect = lambda xt, t_, scale: scale * target
    assert d.training_loss(perfect, x0, t, noise, model_kwargs={"scale": 1.0}).item() < 1e-12
    per_sample = d.training_loss(
        lambda xt, t_: torch.zeros_like(xt), x0, t, noise, reduction="none"
    )
    assert per_sample.shape == (6,)
    torch.testing.assert_close(per_sample, target.pow(2).flatten(1).mean(1))
    # t and noise drawn when omitted; gradients flow to the model
    layer = torch.nn.Linear(4, 4)
    loss = d.training_loss(lambda xt, t_: layer(xt), x0)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert layer.weight.grad is not None


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ideal_denoiser_memorises_the_training_set(prediction):
    d = GaussianDiffusion(cosine_betas(1000), prediction)
    data = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = ideal_denoiser(d, data)
    # nearly clean: E[x_0 | x_t] is the training image itself
    t0 = torch.zeros(16, dtype=torch.long)
    xt = d.q_sample(data, t0)
    torch.testing.assert_close(d.predict_x0(xt, t0, model(xt, t0)), data, atol=1e-4, rtol=1e-4)
    # pure noise: the dataset mean
    tT, xT = torch.full((4,), 999), torch.randn(4, 3, 8, 8)
    x0_hat = d.predict_x0(xT, tT, model(xT, tT))
    torch.testing.assert_close(x0_hat, data.mean(0).expand(4, -1, -1, -1), atol=0.05, rtol=0)
    # sampling reproduces training images (memorisation)
    x = d.sample(model, (8, 3, 8, 8), 25, 0.0, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(x.flatten(1), data.flatten(1)).min(1).values  # (8,)
    assert dist.max() < 1e-2


# 5. seeded regressions --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "steps, eta, expected_sum, expected_abs_sum",
    [("all", 1.0, 0.4296, 27.6515), (20, 1.0, -2.3958, 25.5672), (20, 0.0, -0.6588, 22.3438)],
    ids=["ddpm", "strided-ancestral", "ddim"],
)
def test_seeded_sample_regression(steps, eta, expected_sum, expected_abs_sum):
    """A fixed seed gives a fixed sample (values recorded with torch 2.14.1 on CPU)."""
    d = GaussianDiffusion(cosine_betas(100), "eps")
    model = gaussian_denoiser(d, MU, S)
    x = d.sample(model, (8, 4), steps, eta, generator=torch.Generator().manual_seed(1234))
    assert x.sum().item() == pytest.approx(expected_sum, abs=1e-3)
    assert x.abs().sum().item() == pytest.approx(expected_abs_sum, abs=1e-3)


def test_linear_betas_are_numpy_compatible():
    d = GaussianDiffusion(np.linspace(1e-4, 0.02, 50))
    assert d.T == 50 and d.alpha_bar.dtype == torch.float64
