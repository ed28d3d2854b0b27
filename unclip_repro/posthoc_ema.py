"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", §3): the length of the weight average chosen after training, not before.

A run with `TrainConfig.ema_snapshot_every` > 0 tracks, beside its usual EMA, two
power-function EMAs (EDM2 eq. 3: θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t, β_t = (1 − 1/t)^(γ+1), the
averaging profile's width relative to t set by σ_rel, `TrainConfig.ema_sigma_rels`) and writes
a snapshot of each every that many steps (and at the last):

    RUN/ema/sigma0.050-step0001000.safetensors   the σ_rel = 0.05 average after 1,000 steps

`synthesize` then builds the EMA of any other σ_rel at a snapshot's step as the least-squares
combination of the snapshots' averaging profiles (EDM2 Algorithm 3), and `save` writes it as a
component checkpoint that everything else loads (`python -m unclip_repro posthoc-ema`). The
tracking and the solve are ema_pytorch's (`KarrasEMA`, `solve_weights`); the snapshots are
safetensors files written atomically, so a run stopped and resumed writes the same ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from ema_pytorch.post_hoc_ema import KarrasEMA, sigma_rel_to_gamma, solve_weights
from safetensors.torch import load_file, save_file
from torch import nn

from . import checkpoint
from .errors import UserError

FOLDER = "ema"
_NAME = re.compile(r"sigma(\d+\.\d+)-step(\d+)\.safetensors")


def check_sigma_rel(sigma_rel: float) -> float:
    """σ_rel itself, or a UserError where no power-function EMA has that width (EDM2: γ > −1
    needs σ_rel < 0.289, 1/√12, the width of a plain average over the whole run)."""
    if not 0 < sigma_rel < 12**-0.5:
        raise UserError(f"an EMA's sigma_rel must lie in (0, 0.288), got {sigma_rel}")
    return sigma_rel


class Tracker(nn.Module):
    """The power-function EMAs of one run's module, and their snapshots in `folder`."""

    def __init__(self, module: nn.Module, sigma_rels: tuple[float, ...], folder: Path) -> None:
        super().__init__()
        if len(set(sigma_rels)) < 2:
            raise UserError(
                f"post-hoc EMA tracks two or more distinct sigma_rels, got {sigma_rels}"
            )
        self.sigma_rels = tuple(check_sigma_rel(s) for s in sigma_rels)
        self.folder = Path(folder)
        self.averages = nn.ModuleList(
            KarrasEMA(module, sigma_rel=s, update_every=1) for s in self.sigma_rels
        )

    @torch.no_grad()
    def update(self) -> None:
        """Fold the module's current weights into each average (after an optimiser step)."""
        for average in self.averages:
            average.update()

    def snapshot(self, step: int) -> None:
        """Write each average as it is after `step` steps (replacing a file of the same step)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for sigma, average in zip(self.sigma_rels, self.averages, strict=True):
            path = self.folder / f"sigma{sigma:.3f}-step{step:07d}.safetensors"
            tmp = path.with_suffix(".tmp")
            weights = {
                k: v.detach().cpu().contiguous() for k, v in average.ema_model.state_dict().items()
            }
            save_file(weights, tmp, metadata={"step": str(step), "sigma_rel": str(sigma)})
            os.replace(tmp, path)


def snapshots(run: str | Path) -> list[tuple[float, int, Path]]:
    """(σ_rel, step, file) of each snapshot a run wrote, in step order."""
    found = []
    for path in (Path(run) / FOLDER).glob("sigma*-step*.safetensors"):
        if m := _NAME.fullmatch(path.name):
            found.append((float(m[1]), int(m[2]), path))
    return sorted(found, key=lambda s: (s[1], s[0]))


@torch.no_grad()
def synthesize(
    run: str | Path, sigma_rel: float, step: int | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """The weights of the σ_rel power-function EMA after `step` steps (default: the last
    snapshot's), from the snapshots up to that step; and the step."""
    check_sigma_rel(sigma_rel)
    found = snapshots(run)
    if not found:
        raise UserError(
            f"{run} has no EMA snapshots in {FOLDER}/: train it with "
            "--set train.STAGE.ema_snapshot_every=N"
        )
    last = max(s for _, s, _ in found)
    step = last if step is None else step
    used = [f for f in found if f[1] <= step]
    if step not in {s for _, s, _ in used}:
        steps = sorted({s for _, s, _ in found})
        raise UserError(f"{run} has no snapshot at step {step}; it has {steps[0]} … {steps[-1]}")
    gammas = torch.tensor([sigma_rel_to_gamma(s) for s, _, _ in used])
    times = torch.tensor([float(s) for _, s, _ in used])
    weights = solve_weights(
        times, gammas, torch.tensor([float(step)]), torch.tensor([sigma_rel_to_gamma(sigma_rel)])
    ).squeeze(-1)
    total: dict[str, torch.Tensor] = {}
    for w, (_, _, path) in zip(weights.tolist(), used, strict=True):
        for k, v in load_file(path).items():
            if v.is_floating_point():
                total[k] = total.get(k, 0) + w * v.double()
            else:
                total[k] = v
    return {k: v.float() if v.is_floating_point() else v for k, v in total.items()}, step


def save(run: str | Path, sigma_rel: float, out: str | Path, step: int | None = None) -> Path:
    """`synthesize`'s weights as a checkpoint in `out` (the run's config, no training state):
    a component every loader takes."""
    weights, step = synthesize(run, sigma_rel, step)
    config = checkpoint.load_config(run) | {
        "step": step,
        "posthoc_ema": {"run": str(run), "sigma_rel": sigma_rel, "step": step},
    }
    return checkpoint.save(out, weights, config)
