"""One training loop for every component: AdamW, EMA, gradient clipping, AMP on GPU,
DistributedDataParallel under `torchrun`, atomic checkpoints and exact resume.

A *stage* says what to build and how to draw a batch; the model's `forward(**batch)`
returns its training loss. Everything random in step s comes from seeds derived from
(seed, s, rank), so a run stopped after N steps and resumed to 2N gives the same weights
as a run of 2N steps without a stop.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import checkpoint
from .ar_prior import ARPrior
from .clip import Clip
from .config import Preset, TrainConfig, preset_from_dict
from .data.pool import cached_pool, pool_batch
from .data.shapes import sample_batch
from .decoder import Decoder
from .prior import DiffusionPrior
from .upsampler import Upsampler

Batch = dict[str, Any]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


@dataclass
class Stage:
    """What one training stage builds and how it draws a batch of step s.

    `data(preset, frozen)` runs once per run (e.g. encodes the embedding pool with the frozen
    CLIP), `batch(preset, module, data, rng, batch_size)` draws a batch, and `fit(module, data)`
    sets statistics a fresh model needs before its first step (the AR prior's PCA).
    """

    build: Callable[[Preset], nn.Module]
    batch: Callable[[Preset, nn.Module, Any, np.random.Generator, int], Batch]
    data: Callable[[Preset, Frozen], Any] | None = None
    fit: Callable[[nn.Module, Any], None] | None = None

    @property
    def needs_clip(self) -> bool:
        """Whether the stage trains on a frozen CLIP's embeddings."""
        return self.data is not None


@dataclass
class Frozen:
    """The frozen CLIP a later stage trains on, with where it came from."""

    clip: Clip
    path: Path
    sha256: str
    cache_dir: Path  # where the embedding pool is cached
    progress: bool = True


def _clip_batch(
    preset: Preset, model: Clip, data: None, rng: np.random.Generator, batch_size: int
) -> Batch:
    if preset.data.dataset != "shapes":
        raise ValueError(f"stage 'clip' trains on the Shapes world, not {preset.data.dataset!r}")
    images, captions = sample_batch(rng, batch_size, preset.data.resolution, twins=True)
    return {"images": images.to(model.device), "text": model.tokenize(captions)}


def _pool(preset: Preset, frozen: Frozen) -> dict[str, Any]:
    if preset.data.dataset != "shapes":
        raise ValueError(f"the priors train on the Shapes world here, not {preset.data.dataset!r}")
    return cached_pool(
        frozen.clip,
        frozen.sha256,
        frozen.cache_dir,
        preset.data.pool_size,
        preset.data.resolution,
        seed=preset.data.seed,
        progress=frozen.progress,
    )


def _pool_batch(
    preset: Preset, module: nn.Module, pool: dict, rng: np.random.Generator, batch_size: int
) -> Batch:
    device = next(module.parameters()).device
    return {k: v.to(device) for k, v in pool_batch(pool, rng, batch_size).items()}


def _fit_ar(module: ARPrior, pool: dict[str, Any]) -> None:
    module.fit(pool["z_i"], pool["z_t"])


def _frozen_clip(preset: Preset, frozen: Frozen) -> Clip:
    return frozen.clip


@torch.no_grad()
def _image_batch(
    preset: Preset, module: nn.Module, clip: Clip, rng: np.random.Generator, batch_size: int
) -> Batch:
    """Fresh images with their caption's token states and their own z_i, from the frozen CLIP
    (zeros for the GLIDE baseline, which never reads z_i: one image encoding a step saved)."""
    if preset.data.dataset != "shapes":
        raise ValueError(
            f"the decoder trains on the Shapes world here, not {preset.data.dataset!r}"
        )
    images, captions = sample_batch(rng, batch_size, preset.data.resolution)
    images = images.to(clip.device)
    text = clip.encode_text(captions)
    return {
        "images": images,
        "tokens": text.tokens,
        "mask": text.mask,
        "z_i": clip.encode_image(images)
        if module.cfg.image_embedding
        else images.new_zeros(batch_size, clip.cfg.embed_dim),
    }


def _upsampler_batch(
    preset: Preset, module: Upsampler, data: None, rng: np.random.Generator, batch_size: int
) -> Batch:
    """High-resolution renders, their corrupted low-resolution versions and crop corners."""
    cfg = module.cfg
    images, _ = sample_batch(rng, batch_size, cfg.high)  # (B, 3, H, H)
    low = F.interpolate(images, size=(cfg.low, cfg.low), mode="area")  # exact box filter
    corner = rng.integers(0, cfg.high - cfg.crop + 1, size=(2, batch_size))
    device = next(module.parameters()).device
    return {
        "images": images.to(device),
        "low": module.corrupt(low, rng).to(device),
        "top": torch.from_numpy(corner[0]),
        "left": torch.from_numpy(corner[1]),
    }


STAGES: dict[str, Stage] = {
    "clip": Stage(build=lambda p: Clip(p.clip), batch=_clip_batch),
    "prior-diffusion": Stage(
        build=lambda p: DiffusionPrior.from_clip_config(p.prior, p.clip),
        batch=_pool_batch,
        data=_pool,
    ),
    "prior-ar": Stage(
        build=lambda p: ARPrior.from_clip_config(p.ar_prior, p.clip),
        batch=_pool_batch,
        data=_pool,
        fit=_fit_ar,
    ),
    "decoder": Stage(
        build=lambda p: Decoder.from_clip_config(p.decoder, p.clip, p.data.resolution),
        batch=_image_batch,
        data=_frozen_clip,
    ),
    "glide": Stage(  # the GLIDE baseline: the same decoder, conditioned on the caption only
        build=lambda p: Decoder.from_clip_config(
            dataclasses.replace(p.decoder, image_embedding=False), p.clip, p.data.resolution
        ),
        batch=_image_batch,
        data=_frozen_clip,
    ),
    "upsampler1": Stage(build=lambda p: Upsampler(p.upsampler1), batch=_upsampler_batch),
    "upsampler2": Stage(build=lambda p: Upsampler(p.upsampler2), batch=_upsampler_batch),
}


def load_frozen_clip(
    clip: str | Path, cache_dir: Path, device: torch.device, progress: bool = True
) -> Frozen:
    """The trained CLIP in `clip` (a run or checkpoint folder), frozen, for a later stage."""
    if not checkpoint.exists(clip):
        raise FileNotFoundError(
            f"no trained CLIP in {clip}: train one first (python -m unclip_repro train "
            f"--stage clip --out {clip}) or pass --clip DIR"
        )
    module, _ = load_component(clip, device)
    if not isinstance(module, Clip):
        raise checkpoint.CheckpointError(f"{checkpoint.resolve(clip)} is not a CLIP checkpoint")
    module.requires_grad_(False)
    sha = checkpoint.identity(clip)
    return Frozen(module, Path(clip), sha, cache_dir, progress)


@dataclass
class TrainResult:
    """Where a run ended."""

    step: int
    loss: float
    seconds: float
    checkpoint: Path | None


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device), starting the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return dist.get_rank(), world, torch.device("cuda", local)
    return dist.get_rank(), world, torch.device("cpu")


def ema_avg_fn(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """EMA update θ_ema ← d θ_ema + (1 − d) θ with d = min(decay, (1 + n) / (10 + n))."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        torch._foreach_lerp_(ema, current, 1.0 - d)

    return update


def check_resumable(
    saved: dict[str, Any],
    preset: Preset,
    stage: str,
    run_dir: Path,
    frozen: Frozen | None = None,
) -> None:
    """Refuse to resume a run trained with another stage, configuration or CLIP."""
    if saved.get("stage") != stage or "preset" not in saved:
        raise checkpoint.CheckpointError(
            f"{run_dir} holds stage {saved.get('stage')!r}, not {stage!r}: choose another --out"
        )
    if frozen is not None and saved.get("clip", {}).get("sha256") != frozen.sha256:
        raise checkpoint.CheckpointError(
            f"{run_dir} was trained on another CLIP than {frozen.path}: choose another --out"
        )
    old = preset_from_dict(saved["preset"])
    new = dataclasses.replace(preset, train=dict(preset.train))
    if stage in old.train:  # the step budget and checkpoint cadence may change on resume
        new.train[stage] = dataclasses.replace(
            preset.train[stage],
            steps=old.train[stage].steps,
            checkpoint_every=old.train[stage].checkpoint_every,
        )
    if old.to_dict() != new.to_dict():
        diff = [k for k, v in new.to_dict().items() if old.to_dict().get(k) != v]
        raise checkpoint.CheckpointError(
            f"{run_dir} was trained with preset {old.name!r} and other settings "
            f"({', '.join(diff)}); resume with the same preset or choose another --out"
        )


def train(
    preset: Preset,
    stage: str,
    out: str | Path,
    steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
    clip: str | Path | None = None,
) -> TrainResult:
    """Train `stage` of `preset` into the run folder `out`; `steps` is the total to reach.

    Stages after CLIP train on a frozen CLIP's embeddings: `clip` is its run folder
    (default: `clip/` beside `out`, the layout `make demo` uses).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    if stage not in preset.train:
        raise ValueError(f"preset {preset.name!r} has no training settings for stage {stage!r}")
    if steps is not None:
        preset.train[stage].steps = steps
    cfg: TrainConfig = preset.train[stage]
    run_dir = Path(out)
    rank, world, device = _distributed()
    has_checkpoint = checkpoint.exists(run_dir)
    if has_checkpoint and not resume:
        raise FileExistsError(f"{run_dir} already holds a checkpoint: pass --resume to continue")
    if resume and not has_checkpoint:
        raise FileNotFoundError(f"nothing to resume in {run_dir}: no checkpoint there")

    spec = STAGES[stage]
    frozen, data = None, None
    if spec.needs_clip:
        clip_dir = Path(clip) if clip is not None else run_dir.parent / "clip"
        frozen = load_frozen_clip(clip_dir, run_dir.parent, device, progress and rank == 0)
        preset = dataclasses.replace(preset, clip=frozen.clip.cfg)  # the CLIP actually used
        data = spec.data(preset, frozen)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    module = spec.build(preset).to(device)
    if spec.fit is not None and not resume:
        spec.fit(module, data)  # before the EMA copy is taken
    ema = AveragedModel(module, multi_avg_fn=ema_avg_fn(cfg.ema_decay))
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    warmup = max(cfg.warmup, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    start = 0
    if resume:
        check_resumable(checkpoint.load_config(run_dir), preset, stage, run_dir, frozen)
        state = checkpoint.load_train_state(run_dir)
        try:
            module.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])
        except (KeyError, RuntimeError, ValueError) as e:
            msg = str(e).splitlines()[0][:200]
            raise checkpoint.CheckpointError(f"{run_dir} cannot be resumed: {msg}") from None

    model = DistributedDataParallel(module) if world > 1 else module
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log = _Log(run_dir / "log.csv", start) if rank == 0 else None
    saved_at: Path | None = checkpoint.resolve(run_dir) if resume else None

    def save(step: int) -> Path | None:
        if rank != 0:
            return None
        config = {"component": stage, "stage": stage, "step": step, "preset": preset.to_dict()}
        if log is not None:
            config["train_seconds"] = round(time.perf_counter() - log.t0, 3)
        if frozen is not None:
            config["clip"] = {"path": str(frozen.path), "sha256": frozen.sha256}
        state = {
            "step": step,
            "model": module.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        return checkpoint.save(run_dir, ema.module.state_dict(), config, state)

    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=f"train {stage}",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    t0, loss_value = time.perf_counter(), math.nan
    for step in range(start, cfg.steps):
        rng = np.random.default_rng([cfg.seed, step, rank])
        torch.manual_seed(int(rng.integers(2**62)))
        module.train()
        batch = spec.batch(preset, module, data, rng, cfg.batch_size)
        with amp:
            loss = model(**batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
        stats = torch.stack([loss.detach().float(), grad_norm.detach().float()])
        if world > 1:
            dist.all_reduce(stats)
            stats /= world
        loss_value, grad_value = stats.tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
            where = f"last good checkpoint: {saved_at}" if saved_at else "no checkpoint was saved"
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise TrainingDiverged(
                f"{what} became {loss_value if what == 'loss' else grad_value} at step {step + 1}; "
                f"{where}"
            )
        optimizer.step()
        scheduler.step()
        ema.update_parameters(module)
        if log is not None:
            log.write(step + 1, loss_value, grad_value, scheduler.get_last_lr()[0])
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            saved_at = save(step + 1) or saved_at
    bar.close()
    if log is not None:
        log.file.close()
    if world > 1:
        dist.barrier()
    return TrainResult(cfg.steps, loss_value, time.perf_counter() - t0, saved_at)


class _Log:
    """log.csv of a run; rows past the resumed step (written after the last save) are dropped."""

    FIELDS = ["step", "loss", "grad_norm", "lr", "seconds"]

    def __init__(self, path: Path, start: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if start > 0 and path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        self.file = path.open("w", newline="", buffering=1)
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.t0 = time.perf_counter() - (float(rows[-1]["seconds"]) if rows else 0.0)

    def write(self, step: int, loss: float, grad_norm: float, lr: float) -> None:
        """Append one row."""
        seconds = round(time.perf_counter() - self.t0, 3)
        self.writer.writerow(
            dict(zip(self.FIELDS, [step, loss, grad_norm, lr, seconds], strict=True))
        )


def load_component(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Preset]:
    """Rebuild a trained component (EMA weights) from its checkpoint folder, in eval mode."""
    config = checkpoint.load_config(path)
    stage = config.get("stage")
    if stage not in STAGES or "preset" not in config:
        raise checkpoint.CheckpointError(f"{checkpoint.resolve(path)} is not a known component")
    preset = preset_from_dict(config["preset"])
    module = STAGES[stage].build(preset)
    checkpoint.load_into(module, path)
    return module.to(device).eval(), preset


def export_component(run: str | Path, dest: str | Path) -> Path:
    """Ship a trained component: float16 parameters, float32 buffers, config, no train state."""
    module, _ = load_component(run)
    return checkpoint.export(run, dest, half={name for name, _ in module.named_parameters()})
