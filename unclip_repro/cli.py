"""What every command line of the project shares (`python -m unclip_repro`, `eval.*`, `bench/`).

Bad input ends with one line on stderr and a non-zero exit, never a traceback: an argparse
error, an unknown preset or stage, an unwritable folder, a missing, corrupt or mismatched
checkpoint. A warning (a caption's unknown words) is one `warning: ...` line.

The flag vocabulary is the same everywhere: `--checkpoint DIR` a folder of trained components
(or `shapes`, the shipped ones), `--runs DIR` a folder of training runs, `--out` where results
go, `--num-captions` captions to measure on, `--num-samples` images per caption, `--seed`,
`--batch-size`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .errors import UserError  # defined low (data/ raises it too), imported from here by commands
from .train import TrainingFailed


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UserError) instead of usage and message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def writable(folder: str | Path) -> Path:
    """`folder`, created if needed; UserError if it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # a name of its own: torchrun's ranks all probe
            pass
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror or e}") from None
    return folder


def save_grid(images: torch.Tensor | list[torch.Tensor], path: str | Path, nrow: int) -> None:
    """Write images (N, 3, H, W) in [0, 1] as one PNG grid, `nrow` to a row."""
    from torchvision.utils import save_image

    out = Path(path)
    writable(out.parent)
    save_image(images, out, nrow=nrow, padding=2)
    print(f"wrote {out} ({len(images)} images)")


def positive(value: int | None, flag: str) -> None:
    """UserError unless `value` (when given) is at least 1."""
    if value is not None and value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def minutes(text: str) -> float:
    """A duration such as "30m", "2h", "1h30m" or "45" (minutes) in minutes; UserError if not."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m?)?\s*", text)
    if not text.strip() or match is None:
        raise UserError(f"not a duration: {text!r} (e.g. 30m, 2h, 1h30m)")
    hours, mins = (float(g) if g else 0.0 for g in match.groups())
    total = 60 * hours + mins
    if total <= 0:
        raise UserError(f"a duration must be positive, got {text!r}")
    return total


def run(main: Callable[[], int | None]) -> int:
    """Call a command's body and return its exit status: 0; 2 for bad input (one line on
    stderr); 1 when training failed (diverged); 130 on Ctrl-C (the last checkpoint is kept)."""

    def one_line(message, category, *_args, **_kwargs) -> None:  # noqa: ANN001
        print(f"warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return main() or 0
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (UserError, ValueError, FileExistsError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (rerun with --resume)", file=sys.stderr)
        return 130
