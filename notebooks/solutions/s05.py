"""Solutions to the exercises of notebook 05 (the decoder)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

COLUMNS = ["colour", "shape", "size", "position", "all"]


def caption_only(cond: dict) -> dict:
    """Exercise 1: the conditional keyword set with z_i dropped (the caption kept)."""
    return {**cond, "drop_z": torch.ones_like(cond["drop_z"])}


def oracle_table(samplers: dict[str, Callable[[], torch.Tensor]], captions: Sequence[str]):
    """Exercises 1 and 2: one row per sampler, the oracle's accuracy per attribute."""
    from unclip_repro.data import oracle

    rows = {
        name: oracle.score_batch(draw(), list(captions)).mean() for name, draw in samplers.items()
    }
    return pd.DataFrame(rows).T[COLUMNS]


def guidance_sweep(
    sample: Callable[[float], torch.Tensor], captions: Sequence[str], scales: Sequence[float]
) -> pd.DataFrame:
    """Exercise 2: `sample(s)` -> images (B, 3, H, W) in [0, 1]; oracle accuracy per scale."""
    table = oracle_table({f"{s:g}": (lambda s=s: sample(s)) for s in scales}, captions)
    return table.rename_axis("guidance")


def x0_from_eps(
    x_t: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: torch.Tensor
) -> torch.Tensor:
    """Exercise 3: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t."""
    return (x_t - (1 - alpha_bar_t).sqrt() * eps_hat) / alpha_bar_t.sqrt()


def x0_from_v(x_t: torch.Tensor, v_hat: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Exercise 3: x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂."""
    return alpha_bar_t.sqrt() * x_t - (1 - alpha_bar_t).sqrt() * v_hat


def check() -> None:
    """Assert that each solution does what its exercise asks."""
    from unclip_repro.data import shapes
    from unclip_repro.diffusion import GaussianDiffusion, cosine_betas

    # Exercise 1: z_i dropped, nothing else changed
    no = torch.zeros(3, dtype=torch.bool)
    cond = {"z_i": torch.randn(3, 4), "drop_text": no, "drop_z": no}
    out = caption_only(cond)
    assert out["drop_z"].all() and not out["drop_text"].any() and out["z_i"] is cond["z_i"]
    assert not cond["drop_z"].any(), "the original conditioning must not change"

    # Exercise 2: clean renders score 100% in colour and position, gray images 0% in colour
    rng = np.random.default_rng(0)
    scenes = [shapes.random_scene(rng, 1) for _ in range(6)]
    captions = [shapes.caption(s) for s in scenes]
    renders = shapes.render_batch(scenes, 32)
    table = guidance_sweep(
        lambda s: renders if s > 0 else torch.full_like(renders, 0.5), captions, [0, 3]
    )
    assert list(table.index) == ["0", "3"] and list(table.columns) == COLUMNS
    assert table.loc["3", "colour"] == 1.0 and table.loc["3", "position"] == 1.0
    assert table.loc["0", "colour"] == 0.0

    # Exercise 3: both conversions agree with the package's predict_x0
    t = torch.tensor([0, 100, 500, 900])
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    for prediction, convert in (("eps", x0_from_eps), ("v", x0_from_v)):
        diffusion = GaussianDiffusion(cosine_betas(1000), prediction=prediction)
        x_t = diffusion.q_sample(x0, t, noise)
        target = diffusion.target(x0, t, noise)
        ab = diffusion.alpha_bar[t].float()[:, None, None, None]
        ours = convert(x_t, target, ab)
        assert torch.allclose(ours, diffusion.predict_x0(x_t, t, target), atol=1e-4)
        assert torch.allclose(ours, x0, atol=1e-3)
