"""Checkpoints: safetensors weights, a JSON config and (for resuming) the training state.

    RUN/checkpoint/model.safetensors   EMA weights, what sampling uses (never pickle)
    RUN/checkpoint/config.json         component, preset config, step, version, git commit, command
    RUN/checkpoint/train_state.pt      raw weights, optimizer, EMA, scheduler, step; loaded with
                                       weights_only=True, so it can hold tensors and plain data only

A save writes a complete new folder under a temporary name and swaps it in with two
renames; a crash at any moment leaves either the old checkpoint or the new one, never
half of each (`resolve` finds whichever is complete; the next save removes what a killed one
left). A write that fails (disk full, read-only) is a CheckpointError naming the folder, the
previous checkpoint kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__

WEIGHTS, CONFIG, STATE = "model.safetensors", "config.json", "train_state.pt"
SHIPPED = Path(__file__).parent / "checkpoints"  # trained Shapes components, part of the package


def typed_command() -> str:
    """This process's command line as typed (`python -m unclip_repro …`, `python bench/x.py
    …`), without this machine's interpreter path."""
    return " ".join(["python", *sys.orig_argv[1:]])


def shipped(preset: str = "shapes") -> Path:
    """The folder of the components shipped with the package for `preset` (clip/, prior-*/, …)."""
    return SHIPPED / preset


def components_folder(path: str | Path) -> Path:
    """`path` itself if it is a folder, else the shipped components of the preset it names."""
    folder = Path(path)
    return folder if folder.is_dir() or not shipped(str(path)).is_dir() else shipped(str(path))


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit what it is loaded into."""


def resolve(path: str | Path) -> Path:
    """The checkpoint folder of `path`: a checkpoint itself or a run folder holding one."""
    path = Path(path)
    for candidate in (path, path / "checkpoint", path / "checkpoint.old"):
        if (candidate / CONFIG).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    raise CheckpointError(f"no checkpoint in {path} (expected {CONFIG} and {WEIGHTS})")


def exists(path: str | Path) -> bool:
    """Whether `path` holds a checkpoint (or is one)."""
    try:
        resolve(path)
    except CheckpointError:
        return False
    return True


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save(
    run_dir: str | Path,
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write RUN/checkpoint atomically; `dtype` (e.g. float16) casts floating weights to ship."""
    run_dir = Path(run_dir)
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".checkpoint-*"):  # half-written by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run_dir))
    except OSError as e:
        raise CheckpointError(
            f"cannot write a checkpoint in {run_dir}: {e.strerror or e}"
        ) from None
    try:
        tensors = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
            .detach()
            .cpu()
            .contiguous()
            for k, v in weights.items()
        }
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        meta = {
            **config,
            "version": __version__,
            "git_commit": _git_commit(),
            "command": typed_command(),
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if train_state is not None:
            torch.save(train_state, tmp / STATE)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"; {resolve(run_dir)} is kept" if exists(run_dir) else ""
        raise CheckpointError(
            f"cannot write a checkpoint in {run_dir}: {e.strerror or e}{kept}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a checkpoint."""
    folder = resolve(path)
    try:
        return json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {folder / CONFIG}: {e}") from None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, as float32 tensors on the CPU."""
    folder = resolve(path)
    try:
        weights = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt {folder / WEIGHTS}: {e}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def load_into(module: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into `module` strictly; returns its config."""
    config = load_config(path)
    try:
        module.load_state_dict(load_weights(path), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {resolve(path)} does not fit this model: {' '.join(first[:2])[:300]}"
        ) from None
    return config


def load_train_state(path: str | Path) -> dict[str, Any]:
    """The resumable training state of a checkpoint (tensors and plain data only)."""
    file = resolve(path) / STATE
    if not file.is_file():
        raise CheckpointError(f"{file.parent} has no {STATE}: it cannot be resumed")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(f"corrupt {file}: {type(e).__name__}: {e}"[:300]) from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(path: str | Path) -> str:
    """What identifies a trained component: the SHA-256 of the weights it was trained to, kept
    through `export` (so a prior trained on a CLIP still matches that CLIP's shipped copy)."""
    return load_config(path).get("source_sha256") or file_sha256(resolve(path) / WEIGHTS)


def export(path: str | Path, dest: str | Path, half: set[str]) -> Path:
    """Copy a checkpoint's weights and config to the folder `dest`, for shipping: the tensors
    named in `half` (the parameters) in float16, the rest (buffers: PCA, quantizer edges) as
    they are; no training state. Written under a temporary name and renamed."""
    dest = Path(dest)
    weights = {
        k: v.half() if k in half and v.is_floating_point() else v
        for k, v in load_weights(path).items()
    }
    config = {**load_config(path), "source_sha256": identity(path)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        save_file(weights, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
