"""One training loop for every component: AdamW, EMA, gradient clipping, gradient
accumulation, AMP and TF32 on GPU, DistributedDataParallel under `torchrun` (or FSDP,
`TrainConfig.fsdp`), atomic checkpoints and exact resume.

A component's `Stage` (`components.py`) says how it is built and how it draws its training
batch of step s; the model's `forward(**batch)` returns its training loss. A run's settings are
its preset, changed by overrides (`config.override`) before the run and recorded with it. A
step averages the gradients of `TrainConfig.accumulate` micro-batches. Everything random in
micro-batch k of step s comes from seeds derived from (seed, s, rank, k), and real pairs of a
COCO or pairs source are read in an order drawn from the micro-batch's index
(`data/loader.py`), so a run stopped after step N and resumed gives the same weights as a run
without a stop (WebDataset shards stream: their resume is not bit-exact). What a resume may
change is one rule, `resume_conflicts`.

    train(preset, "decoder", "runs/shapes/decoder")   # = _setup, then _resume, then _loop
    train(override(preset, {"train.glide.steps": 100}), "glide", "runs/try/glide")
    train(get_preset("coco-smoke"), "decoder", "runs/coco/decoder",
          source=Source({"annotations": "captions.json", "images": "images/"}))
    train_all("shapes", "runs", budget=30)            # every component, resumable
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import checkpoint, distributed, posthoc_ema
from .clip import Clip, pretrained_config
from .components import STAGES, component_of, load_component
from .config import Preset, TrainConfig, flatten, get_preset, override, preset_from_dict
from .data.loader import Stream
from .errors import UserError
from .files import write_json
from .recipes import Frozen, Images, Source

__all__ = ["Frozen", "Source", "load_frozen_clip", "train", "train_all"]


class TrainingFailed(RuntimeError):
    """A training run stopped (`TrainingDiverged`: its loss or gradient stopped being finite)."""


class TrainingDiverged(TrainingFailed):
    """The loss or the gradient became NaN or infinite."""


@dataclass
class TrainResult:
    """Where a run ended."""

    step: int
    loss: float
    seconds: float
    checkpoint: Path | None


def load_frozen_clip(
    clip: str | Path, cache_dir: Path, device: torch.device, progress: bool = True
) -> Frozen:
    """The trained CLIP in `clip` (a run or checkpoint folder), frozen, for a later stage."""
    if not checkpoint.exists(clip):
        raise FileNotFoundError(
            f"no trained CLIP in {clip}: train one first (python -m unclip_repro train "
            f"--stage clip --out {clip}) or pass --clip DIR"
        )
    module = load_component(clip, device)
    if not isinstance(module, Clip):
        raise checkpoint.CheckpointError(f"{checkpoint.resolve(clip)} is not a CLIP checkpoint")
    module.requires_grad_(False)
    return Frozen(module, Path(clip), checkpoint.identity(clip), cache_dir, progress)


def ema_avg_fn(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """EMA update θ_ema ← d θ_ema + (1 − d) θ with d = min(decay, (1 + n) / (10 + n))."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        torch._foreach_lerp_(ema, current, 1.0 - d)

    return update


def check_trainable(preset: Preset, stage: str) -> None:
    """A UserError unless `stage` is a component and `preset` has training settings for it."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    if stage not in preset.train:
        raise UserError(f"preset {preset.name!r} has no training settings for stage {stage!r}")


def schedule_free(cfg: TrainConfig) -> bool:
    """Whether the learning rate of every step is independent of the total step count."""
    return cfg.schedule == "constant" and cfg.cooldown == 0


def resume_conflicts(old: Preset, new: Preset, stage: str) -> dict[str, tuple[Any, Any]]:
    """The settings `new` changes of `old` (key: (old, new)) that a resumed run of `stage`
    cannot take, because they would change the steps already taken.

    The one rule: what `stage`'s weights depend on (the data, the CLIP, its model settings,
    its training settings) stays, except how the model samples (its `Stage.sampling`), how
    often it checkpoints, whether FSDP shards it (checkpoints hold the same whole weights) and
    the step count where the learning-rate schedule does not depend on it (`schedule_free`).
    """
    spec = STAGES[stage]

    def depends(p: Preset) -> dict[str, Any]:
        train = dataclasses.asdict(p.train[stage]) if stage in p.train else {}
        parts = {"data": p.data, "clip": p.clip, spec.config: spec.settings(p)}
        return flatten({k: dataclasses.asdict(v) for k, v in parts.items()} | {"train": train})

    free = {f"{spec.config}.{f}" for f in spec.sampling} | {"train.checkpoint_every", "train.fsdp"}
    if stage in old.train and stage in new.train:
        if schedule_free(old.train[stage]) and schedule_free(new.train[stage]):
            free.add("train.steps")
    a, b = depends(old), depends(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in free)
    return {k: (a.get(k), b.get(k)) for k in keys}


def check_resumable(
    saved: dict[str, Any],
    preset: Preset,
    stage: str,
    run_dir: Path,
    frozen: Frozen | None = None,
) -> None:
    """Refuse to resume a run trained with another stage, CLIP or settings than `preset`'s
    (`resume_conflicts`), in one line naming what differs and what to do instead."""
    if saved.get("component") != stage or "preset" not in saved:
        raise checkpoint.CheckpointError(
            f"{run_dir} holds {saved.get('component')!r}, not {stage!r}: choose another --out"
        )
    if frozen is not None and saved.get("clip", {}).get("sha256") != frozen.sha256:
        raise checkpoint.CheckpointError(
            f"{run_dir} was trained on another CLIP than {frozen.path}: choose another --out"
        )
    conflicts = resume_conflicts(preset_from_dict(saved["preset"]), preset, stage)
    if list(conflicts) == ["train.steps"]:
        (was, now), cfg = conflicts["train.steps"], preset.train[stage]
        kind = f"{cfg.schedule} schedule" + f" and {cfg.cooldown}-step cooldown" * bool(
            cfg.cooldown
        )
        raise checkpoint.CheckpointError(
            f"{run_dir} trains {was} steps and its {kind} depends on that total: {now} would "
            f"rewrite the steps already taken; resume with --steps {was}, or train further as a "
            f"new run from its weights (--init {run_dir})"
        )
    if conflicts:
        said = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(conflicts.items())[:4])
        more = f" and {len(conflicts) - 4} more" if len(conflicts) > 4 else ""
        raise checkpoint.CheckpointError(
            f"{run_dir} was trained with other settings ({said}{more}); resume with the same "
            "preset and --set, or choose another --out"
        )


@dataclass
class _Run:
    """Everything one training run holds between setup and the last step."""

    preset: Preset
    stage: str
    cfg: TrainConfig
    run_dir: Path
    process: distributed.Process
    frozen: Frozen | None
    data: Any
    module: nn.Module
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    source: Source | None = None
    start: int = 0
    fsdp: bool = False  # module and EMA sharded over the ranks (`distributed.shard`)
    posthoc: posthoc_ema.Tracker | None = None  # rank 0's power-function EMAs, if snapshotted
    names: list[str] = dataclasses.field(default_factory=list)  # parameters, optimiser order

    def save(self, step: int, seconds: float | None) -> Path | None:
        """Write the checkpoint of `step` (rank 0; under FSDP every rank calls it, to gather
        the whole weights, and rank 0 writes them)."""
        config = {"component": self.stage, "step": step, "preset": self.preset.to_dict()}
        if seconds is not None:
            config["train_seconds"] = round(seconds, 3)
        if self.source is not None:  # where the pairs came from (not checked on resume)
            config["data"] = self.source.pairs
        if self.frozen is not None:
            config["clip"] = {"path": str(self.frozen.path), "sha256": self.frozen.sha256}
        if self.fsdp:  # the same layout as unsharded: either resumes the other
            model = distributed.full_state_dict(self.module)
            weights = distributed.full_state_dict(self.ema.module)
            optimizer = _by_index(
                distributed.full_optimizer_state(self.module, self.optimizer), self.names
            )
            if self.process.rank != 0:
                return None
            ema = {f"module.{k}": v for k, v in weights.items()}
            ema["n_averaged"] = self.ema.n_averaged.cpu()
        else:
            model, weights = self.module.state_dict(), self.ema.module.state_dict()
            ema, optimizer = self.ema.state_dict(), self.optimizer.state_dict()
        state = {
            "step": step,
            "model": model,
            "ema": ema,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
        }
        if self.posthoc is not None:
            state["posthoc_ema"] = self.posthoc.state_dict()
        return checkpoint.save(self.run_dir, weights, config, state)


def _by_index(state: dict, names: list[str]) -> dict:
    """An optimiser state keyed by parameter name (FSDP's) keyed by index instead, as
    `Optimizer.state_dict` keys it; {} stays {} (the ranks other than 0)."""
    if not state:
        return state
    index = {name: i for i, name in enumerate(names)}
    groups = [g | {"params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def _by_name(state: dict, names: list[str]) -> dict:
    """The inverse of `_by_index`."""
    groups = [g | {"params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def adamw(module: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with `cfg`'s settings over `module`'s trainable parameters, weight decay on the
    matrices only, each `cfg.lr_scales` prefix at its own rate. Returns it and the parameters'
    names in its order (per rate, decayed first; without lr_scales: two groups)."""
    scales = [(str(prefix), float(factor)) for prefix, factor in cfg.lr_scales]
    groups: dict[tuple[float, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            factor = next((f for prefix, f in scales if name.startswith(prefix)), 1.0)
            groups.setdefault((factor, p.ndim < 2), []).append((name, p))
    order = sorted(groups, key=lambda k: (k[0] != 1.0, k))  # the default rate's groups first
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for _, p in groups[k]], "lr": cfg.lr * k[0]}
            | ({"weight_decay": 0.0} if k[1] else {})
            for k in order
        ],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    return optimizer, [name for k in order for name, _ in groups[k]]


def _setup(
    preset: Preset,
    stage: str,
    out: Path,
    resume: bool,
    progress: bool,
    clip: str | Path | None,
    source: Source | None = None,
    init: str | Path | None = None,
) -> _Run:
    """Check the run folder, load the frozen CLIP and its data, build model and optimiser."""
    spec = STAGES[stage]
    held = None if init is None else component_of(init)  # the component `init` holds
    if held is not None and held not in (stage, *spec.starts_from):
        raise UserError(f"--init {init} holds a {held}, not a {stage}")
    if preset.data.dataset == "shapes" and source is not None:
        raise UserError(
            f"preset {preset.name!r} draws the Shapes world; real pairs need a real-data "
            "preset (coco-smoke, coco-gpu)"
        )
    if preset.data.dataset != "shapes" and source is None:
        raise UserError(
            f"preset {preset.name!r} trains on real pairs: give --annotations FILE --images "
            "DIR, --pairs FILE --root DIR or --shards PATTERN"
        )
    has_checkpoint = checkpoint.exists(out)
    if has_checkpoint and not resume:
        raise FileExistsError(f"{out} already holds a checkpoint: pass --resume to continue")
    if resume and not has_checkpoint:
        raise FileNotFoundError(f"nothing to resume in {out}: no checkpoint there")
    process = distributed.setup()
    frozen, data = None, None
    if spec.on_clip:
        clip_dir = Path(clip) if clip is not None else out.parent / "clip"
        frozen = load_frozen_clip(
            clip_dir, out.parent, process.device, progress and not process.rank
        )
        preset = dataclasses.replace(preset, clip=frozen.clip.cfg)  # the CLIP actually used
    if spec.data is not None and (frozen is not None or source is not None):
        data = spec.data(preset, frozen, source)
    cfg = preset.train[stage]
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    module = spec.build(preset).to(process.device)
    if held is not None and held != stage:  # the decoder from GLIDE's weights
        try:
            module.load_glide(checkpoint.load_weights(init))
        except ValueError as e:
            raise checkpoint.CheckpointError(f"--init {init}: {e}") from None
    elif held is not None:  # fine-tuning (a new run: `train` refuses it with resume): EMA weights
        checkpoint.load_into(module, init)
    elif spec.fit is not None and not resume:
        spec.fit(module, data)  # before the EMA copy is taken
    ema = AveragedModel(module, multi_avg_fn=ema_avg_fn(cfg.ema_decay))
    fsdp = cfg.fsdp and process.world > 1  # one process: nothing to shard
    posthoc = None
    if cfg.ema_snapshot_every:
        if fsdp:
            raise UserError("post-hoc EMA snapshots (ema_snapshot_every) do not run under FSDP")
        if process.rank == 0:
            posthoc = posthoc_ema.Tracker(module, cfg.ema_sigma_rels, out / posthoc_ema.FOLDER)
    if fsdp:  # the EMA sharded as the model is, so that its update is shard by shard
        distributed.shard(module, spec.sharded)
        distributed.shard(ema.module, spec.sharded)
    optimizer, names = adamw(module, cfg)
    if cfg.accumulate < 1:
        raise ValueError(f"accumulate must be at least 1, got {cfg.accumulate}")
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose 'constant' or 'cosine'")
    warmup, decay = max(cfg.warmup, 1), max(cfg.steps - cfg.warmup, 1)

    def lr_factor(step: int) -> float:  # of cfg.lr, before step `step`
        if step < warmup or cfg.schedule == "constant":
            factor = min(1.0, (step + 1) / warmup)
        else:
            factor = 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))
        left = cfg.steps - step  # steps to go, this one included
        cooldown = min(cfg.cooldown, cfg.steps)  # a shorter run (--budget) cools down throughout
        return factor * min(1.0, max(left, 0) / cooldown) if cooldown else factor

    return _Run(
        preset,
        stage,
        cfg,
        out,
        process,
        frozen,
        data,
        module,
        ema,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor),
        source,
        fsdp=fsdp,
        posthoc=posthoc,
        names=names,
    )


def _resume(run: _Run) -> None:
    """Load the saved model, EMA, optimiser and scheduler states; refuse a mismatched run."""
    check_resumable(
        checkpoint.load_config(run.run_dir), run.preset, run.stage, run.run_dir, run.frozen
    )
    state = checkpoint.load_train_state(run.run_dir)
    try:
        if run.fsdp:
            ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
            run.ema.n_averaged.copy_(ema.pop("n_averaged"))
            distributed.load_full_state_dict(run.module, state["model"])
            distributed.load_full_state_dict(run.ema.module, ema)
            optimizer = _by_name(state["optimizer"], run.names)
            distributed.load_full_optimizer_state(run.module, run.optimizer, optimizer)
        else:
            run.module.load_state_dict(state["model"])
            run.ema.load_state_dict(state["ema"])
            run.optimizer.load_state_dict(state["optimizer"])
        if run.posthoc is not None:
            run.posthoc.load_state_dict(state["posthoc_ema"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.start = int(state["step"])
    except (KeyError, RuntimeError, ValueError) as e:
        msg = str(e).splitlines()[0][:200]
        raise checkpoint.CheckpointError(f"{run.run_dir} cannot be resumed: {msg}") from None


def precision(device: torch.device, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """The training precision on `device`: on CUDA, bf16 autocast (the returned context) and
    TF32 for the matmuls and convolutions left in float32 (set here, for the process); on the
    CPU float32 throughout, or bf16 autocast when `cpu_bf16` (`TrainConfig.cpu_bf16`: faster,
    other numbers; weights, gradients and optimiser state stay float32)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)


def _micro_batch(run: _Run, step: int, k: int) -> dict | None:
    """Micro-batch k of step `step` on this rank, drawn with a generator seeded from (seed,
    step, rank, k) (k = 0: (seed, step, rank), as before accumulation), torch's seeded from it."""
    rng = np.random.default_rng([run.cfg.seed, step, run.process.rank, *([k] if k else [])])
    torch.manual_seed(int(rng.integers(2**62)))
    return STAGES[run.stage].batch(run.preset, run.module, run.data, rng, run.cfg.batch_size)


def _sync(run: _Run, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Where gradients are reduced over ranks in backward: at the last micro-batch only."""
    if run.fsdp:
        run.module.set_requires_gradient_sync(last)
    elif isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def _step(
    run: _Run, model: nn.Module, batches: list[dict], amp: Any, step: int, saved_at: Path | None
) -> tuple[float, float]:
    """One optimiser step on the micro-batches `batches`: forward and backward of each (the
    gradient of their mean loss), clip, step, EMA; (loss, grad norm) averaged over ranks;
    TrainingDiverged when either is not finite."""
    run.optimizer.zero_grad(set_to_none=True)
    loss = 0
    for k, batch in enumerate(batches):
        with _sync(run, model, last=k == len(batches) - 1):
            with amp:
                micro = model(**batch) / len(batches)
            micro.backward()
        loss = loss + micro.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.module.parameters(), run.cfg.grad_clip)
    if isinstance(grad_norm, DTensor):  # FSDP: the norm over every shard, on every rank
        grad_norm = grad_norm.full_tensor()
    stats = torch.stack([loss.detach().float(), grad_norm.detach().float()])
    if run.process.world > 1:
        dist.all_reduce(stats)
        stats /= run.process.world
    loss_value, grad_value = stats.tolist()
    if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
        where = f"last good checkpoint: {saved_at}" if saved_at else "no checkpoint was saved"
        what = "loss" if not math.isfinite(loss_value) else "gradient norm"
        raise TrainingDiverged(
            f"{what} became {loss_value if what == 'loss' else grad_value} at step {step + 1}; "
            f"{where}"
        )
    run.optimizer.step()
    run.scheduler.step()
    run.ema.update_parameters(run.module)
    if run.posthoc is not None:
        run.posthoc.update()
    return loss_value, grad_value


def _loop(run: _Run, progress: bool) -> TrainResult:
    """Steps `run.start` … `cfg.steps`: forward, backward, clip, step, EMA, log, checkpoint."""
    cfg, rank, world = run.cfg, run.process.rank, run.process.world
    model = DistributedDataParallel(run.module) if world > 1 and not run.fsdp else run.module
    amp = precision(run.process.device, cfg.cpu_bf16)
    log = _Log(run.run_dir / "log.csv", run.start) if rank == 0 else None
    saved_at: Path | None = checkpoint.resolve(run.run_dir) if run.start else None
    bar = tqdm(
        total=cfg.steps,
        initial=run.start,
        desc=f"train {run.stage}",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    t0, loss_value = time.perf_counter(), math.nan
    if isinstance(run.data, Images):  # real images: the stream's steps are micro-batches
        workers = run.source.workers if run.source else 0
        run.data.stream = Stream(run.data.dataset, cfg.batch_size, cfg.seed, workers, rank, world)
        run.data.stream.start(run.start * cfg.accumulate)
    try:  # the bar, the log and the readers closed whatever ends the loop: a one-line error
        # then starts on a line of its own
        for step in range(run.start, cfg.steps):
            run.module.train()
            batches = [_micro_batch(run, step, k) for k in range(cfg.accumulate)]
            skip = torch.tensor(float(None in batches), device=run.process.device)
            if world > 1:  # every rank skips a step when one of them read no image in one
                dist.all_reduce(skip, op=dist.ReduceOp.MAX)
            if not skip:
                loss_value, grad_value = _step(run, model, batches, amp, step, saved_at)
                if log is not None:
                    log.write(step + 1, loss_value, grad_value, run.scheduler.get_last_lr()[0])
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            last = step + 1 == cfg.steps
            if run.posthoc is not None and ((step + 1) % cfg.ema_snapshot_every == 0 or last):
                run.posthoc.snapshot(step + 1)
            due = (step + 1) % cfg.checkpoint_every == 0 or last
            if due and (rank == 0 or run.fsdp):  # FSDP: every rank gathers, rank 0 writes
                saved_at = run.save(step + 1, log.seconds() if log else None) or saved_at
    finally:
        if isinstance(run.data, Images):
            run.data.stream.close()
        bar.close()
        if log is not None:
            log.file.close()
    if world > 1:
        dist.barrier()
    return TrainResult(cfg.steps, loss_value, time.perf_counter() - t0, saved_at)


def import_clip(
    preset: Preset, out: str | Path, arch: str | None = None, weights: str | Path | None = None
) -> TrainResult:
    """The `clip` stage of a real-data preset: the frozen pretrained OpenCLIP `arch` (an
    open_clip model name or the path of a model-config JSON; default: the preset's) with the
    weights file `weights`, stored in the run folder `out` as a checkpoint (safetensors), so
    that later stages and `UnCLIP.load` find it as they find a trained CLIP."""
    t0, out = time.perf_counter(), Path(out)
    arch, weights = arch or preset.clip.pretrained, weights or preset.clip.checkpoint
    if arch is None or weights is None:
        raise UserError(
            f"the clip stage of {preset.name!r} imports a pretrained OpenCLIP: pass "
            "--clip-model ARCH (an open_clip name or model-config JSON) --clip-checkpoint FILE"
        )
    if checkpoint.exists(out):
        raise FileExistsError(f"{out} already holds a checkpoint: choose another --out")
    cfg = pretrained_config(arch, weights, preset.clip)
    clip = Clip(cfg)  # MissingCheckpointError: one line naming the file
    source = {"arch": arch, "file": str(weights), "sha256": checkpoint.file_sha256(weights)}
    config = {
        "component": "clip",
        "step": 0,
        "preset": dataclasses.replace(preset, clip=cfg).to_dict(),
        "imported": source,  # the weights themselves are in this folder: it stands alone
    }
    saved = checkpoint.save(out, clip.state_dict(), config)
    return TrainResult(0, math.nan, time.perf_counter() - t0, saved)


def train(
    preset: Preset,
    stage: str,
    out: str | Path,
    *,
    resume: bool = False,
    init: str | Path | None = None,
    clip: str | Path | None = None,
    source: Source | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `stage` of `preset` into the run folder `out`, to `preset.train[stage].steps`.

    Change a setting with `config.override` first (it is recorded in the checkpoint). `resume`
    continues the run in `out` (`resume_conflicts` says what it may change); `init`, a
    checkpoint folder of the same component (or one its `Stage.starts_from` names: the
    decoder from GLIDE, `Decoder.load_glide`), starts a new run from its weights with a fresh
    optimiser. Stages after CLIP train on a frozen CLIP's embeddings: `clip` is its run folder
    (default: `clip/` beside `out`, the layout `train_all` writes). A real-data preset trains
    on `source` (the Shapes presets on their own world); its `clip` stage imports a pretrained
    OpenCLIP (`import_clip`) instead.
    """
    check_trainable(preset, stage)
    if stage == "clip" and preset.data.dataset != "shapes":
        if resume:
            raise UserError("an imported CLIP is frozen: there is nothing to resume")
        return import_clip(preset, out)
    if init is not None and resume:
        raise UserError("--init starts a new run and --resume continues one: give one of them")
    run = _setup(preset, stage, Path(out), resume, progress, clip, source, init)
    if resume:
        _resume(run)
    return _loop(run, progress)


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

    def seconds(self) -> float:
        """Training seconds so far, over every sitting of the run."""
        return time.perf_counter() - self.t0

    def write(self, step: int, loss: float, grad_norm: float, lr: float) -> None:
        """Append one row."""
        seconds = round(self.seconds(), 3)
        self.writer.writerow(
            dict(zip(self.FIELDS, [step, loss, grad_norm, lr, seconds], strict=True))
        )


def _fresh_or_resumable(run_dir: Path, preset: Preset, stage: str) -> bool:
    """Whether `run_dir` holds a run to resume; one made with other settings (an older
    version, another CLIP) is moved aside first, so that it trains anew."""
    if not checkpoint.exists(run_dir):
        return False
    try:
        frozen = None
        if STAGES[stage].on_clip:
            frozen = load_frozen_clip(run_dir.parent / "clip", run_dir.parent, "cpu", False)
            preset = dataclasses.replace(preset, clip=frozen.clip.cfg)  # as `_setup` sees it
        check_resumable(checkpoint.load_config(run_dir), preset, stage, run_dir, frozen)
    except checkpoint.CheckpointError:
        stale = run_dir.with_name(f"{run_dir.name}.stale-{int(time.time())}")
        run_dir.rename(stale)
        print(f"{run_dir} was trained with other settings; moved to {stale}, training anew")
        return False
    return True


def budget_preset(preset: Preset, minutes: float | None) -> Preset:
    """`preset` with every stage's steps scaled to `minutes` of training on 2 cores, out of
    the preset's full `budget_minutes` (None: the full budget)."""
    if minutes is None or preset.budget_minutes is None:
        return preset
    scale = minutes / preset.budget_minutes
    steps = {
        f"train.{k}.steps": max(v.warmup + 1, round(v.steps * scale))
        for k, v in preset.train.items()
    }
    return override(preset, steps)


def _run_folder(runs: str | Path, preset: str, budget: float | None) -> Path:
    """Where `train_all` puts a preset's run folders: RUNS/PRESET, or RUNS/PRESET-<budget>m."""
    return Path(runs) / (preset if budget is None else f"{preset}-{budget:g}m")


def train_all(
    preset: str,
    runs: str | Path,
    budget: float | None = None,
    progress: bool = True,
    stages: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """Train every component of `preset` (or only `stages`) one after another into
    `runs/<preset>/<component>` (with a `budget` in minutes: `runs/<preset>-<budget>m/`, every
    stage's steps scaled down), resuming what an earlier sitting left. A stage whose settings
    name an `init` (the decoder: GLIDE) trains after it, from its weights.
    Returns the seconds each component took in this sitting."""
    settings = budget_preset(get_preset(preset), budget)
    folder = _run_folder(runs, preset, budget)
    seconds: dict[str, float] = {}
    todo = [s for s in STAGES if stages is None or s in stages]
    starts = {s: settings.train[s].init for s in todo if settings.train[s].init}
    todo = [s for s in todo if s not in starts.values()]  # each run after the one it starts from
    for stage, source in starts.items():
        todo.insert(todo.index(stage), source)
    for i, stage in enumerate(todo, start=1):
        run_dir, steps = folder / stage, settings.train[stage].steps
        print(f"[{i}/{len(todo)}] {stage}: {steps} steps -> {run_dir}", flush=True)
        resume = _fresh_or_resumable(run_dir, settings, stage)
        init = None if resume or stage not in starts else folder / starts[stage]
        t0 = time.perf_counter()  # the embedding pool is encoded inside the first prior's
        result = train(settings, stage, run_dir, resume=resume, progress=progress, init=init)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        print(f"      {stage}: {result.step} steps, {seconds[stage]:.0f} s this sitting")
    name = "timing.json" if stages is None else "timing-stages.json"
    write_json(folder / name, {"seconds_this_sitting": seconds, "budget_min": budget})
    return seconds
