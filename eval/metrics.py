"""The numbers of the harness, from maintained libraries: FID (clean-fid's Fréchet distance),
precision / recall / density / coverage (prdc, Naeem et al. 2020), and diversity (mean
pairwise feature distance between samples of one caption). Reference statistics are cached
on disk, keyed by what they were computed from, so reruns do not recompute them. Also the
plumbing every harness command shares: one-line errors, loading a model, the report's
machine line and atomic writes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch


class EvalError(Exception):
    """Bad input to a harness command: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (an EvalError) instead of usage and message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EvalError(f"{message} (see `{self.prog} --help`)")


def run(main: Callable[[], int]) -> int:
    """Call a command's body; an EvalError becomes `error: ...` on stderr and status 2."""
    try:
        return main()
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def load_model(path: str | Path, device: str | torch.device = "cpu"):  # noqa: ANN201
    """`UnCLIP.load(path)`, with a missing or mismatched checkpoint as an EvalError."""
    from unclip_repro import checkpoint
    from unclip_repro.pipeline import UnCLIP

    try:
        return UnCLIP.load(path, device=device)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise EvalError(str(e)) from None


def require_methods(model, methods: list[str], where: str) -> None:  # noqa: ANN001
    """EvalError unless the model has what each method needs: a GLIDE baseline for "glide",
    the prior of that name for "diffusion" / "ar" (the rest need only the decoder)."""
    for method in methods:
        if method == "glide" and model.glide is None:
            raise EvalError(f"{where} has no GLIDE baseline (glide/)")
        if method in ("diffusion", "ar") and method not in model.priors:
            raise EvalError(f"{where} has no {method} prior")


def machine(device: str | torch.device = "cpu") -> str:
    """What a timing was measured on, for the reports."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )


def write_text(path: str | Path, text: str) -> None:
    """Write a file atomically (a crash leaves the old one or the new one, never half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_results(
    out: str | Path,
    name: str,
    table: pd.DataFrame,
    command: str,
    seconds: float,
    device: str | torch.device = "cpu",
    float_format: str = "%.4f",
    **extra: object,
) -> None:
    """A command's results: `{out}/{name}.csv` (the table) and `{name}.json` (the command,
    wall time, machine and `extra`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False, float_format=float_format)
    report = {"command": command, "wall_s": round(seconds, 1), "machine": machine(device)}
    write_json(out / f"{name}.json", report | extra)


@dataclass
class Stats:
    """Mean (d,) and covariance (d, d) of n feature vectors: what FID compares."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray) -> Stats:
        f = np.asarray(features, dtype=np.float64)
        if len(f) < 2:
            raise EvalError(f"FID needs at least 2 images, got {len(f)}")
        return cls(f.mean(0), np.cov(f, rowvar=False), len(f))


def fid(a: Stats, b: Stats) -> float:
    """The Fréchet distance between two feature Gaussians (clean-fid's implementation)."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of fake features against real ones (prdc,
    k-nearest-neighbour manifolds; k is capped below the smaller set's size)."""
    import prdc

    k = max(1, min(k, len(real) - 2, len(fake) - 2))  # the k-th neighbour besides itself
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        scores = prdc.compute_prdc(np.asarray(real), np.asarray(fake), nearest_k=k)
    return {name: float(value) for name, value in scores.items()}


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise L2 distance between the samples of each caption, averaged over captions:
    features (C, S, d) for C captions of S samples each."""
    C, S, _ = features.shape
    if S < 2:
        raise EvalError("diversity needs at least 2 samples per caption")
    dist = torch.cdist(features.float(), features.float())  # (C, S, S)
    return float(dist.sum((1, 2)).mean() / (S * (S - 1)))


def cache_key(**parts: object) -> str:
    """A short stable hash of JSON-able parts (the image set, the extractor, the resolution)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_stats(
    cache_dir: str | Path, key: str, compute: Callable[[], tuple[np.ndarray, dict]]
) -> tuple[Stats, dict]:
    """Reference statistics under `key` in `cache_dir`, or `compute()` → (features, info)
    saved there atomically. `info` (counts of images used and skipped) is kept beside them."""
    path = Path(cache_dir) / f"ref-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                info = json.loads(str(z["info"]))
                return Stats(z["mu"], z["sigma"], int(z["n"])), info | {"cached": True}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is recomputed, never trusted
    features, info = compute()
    stats = Stats.of(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=stats.n, info=json.dumps(info))
    os.replace(tmp, path)
    return stats, info | {"cached": False}
