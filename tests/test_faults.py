"""Fault injection: a training process killed at random points, a disk that fills up or turns
read-only, damaged checkpoint and cache files. Each fault ends in the previous good state and
one line that names the file, never a traceback or a silent load."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from unclip_repro import checkpoint
from unclip_repro.__main__ import main
from unclip_repro.components import load_component
from unclip_repro.config import get_preset, override
from unclip_repro.files import write_json
from unclip_repro.train import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ["-m", "unclip_repro", "train", "--preset", "shapes-smoke", "--stage", "clip"]
TRAIN += ["--steps", "40", "--set", "train.checkpoint_every=1"]


def _errors(capsys) -> list[str]:
    """The error lines a command wrote (its progress bar shares stderr); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.replace("\r", "\n").splitlines()  # a progress bar redraws with \r
    return [line for line in lines if line.startswith("error: ")]


def _state(run):
    state = checkpoint.load_train_state(run)
    return state["model"], state["ema"]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_unbroken_run(tmp_path):
    """Killed (SIGKILL) five times at random moments of a 40-step run that checkpoints every
    step (so kills land in checkpoint writes too), each time resumed: the last run ends on the
    weights, EMA and log of a run never killed, and no half-written folder is left."""
    rng, killed, run = random.Random(0), tmp_path / "killed", tmp_path / "killed"
    for _ in range(20):
        resume = ["--resume"] if checkpoint.exists(run) else []
        proc = subprocess.Popen(
            [sys.executable, *TRAIN, "--out", str(run), *resume],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if len(list(tmp_path.glob("kill-*"))) < 5:
            deadline = time.monotonic() + 60
            while not (run / "log.csv").exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # torch imported, training under way
            time.sleep(rng.uniform(0.0, 0.8))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                (tmp_path / f"kill-{rng.random()}").touch()
                continue
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        break
    assert len(list(tmp_path.glob("kill-*"))) == 5
    whole = tmp_path / "whole"
    done = subprocess.run([sys.executable, *TRAIN, "--out", str(whole)], env=ENV, timeout=120)
    assert done.returncode == 0
    for a, b in zip(_state(killed), _state(whole), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k in b)
    steps = [line.split(",")[0] for line in (killed / "log.csv").read_text().splitlines()]
    assert steps == ["step", *map(str, range(1, 41))]
    assert not list(killed.glob(".checkpoint-*")) and not (killed / "checkpoint.old").exists()


def test_a_half_written_checkpoint_is_never_loaded_and_is_cleared(tmp_path):
    """A process killed mid-write leaves `.checkpoint-*`: it is ignored, and the next save
    removes it."""
    checkpoint.save(tmp_path, {"w": torch.ones(2)}, {"step": 1})
    half = tmp_path / ".checkpoint-killed"
    half.mkdir()
    (half / checkpoint.WEIGHTS).write_bytes(b"\x00" * 7)  # cut off mid-file
    (half / checkpoint.CONFIG).write_text('{"step": 2}')
    assert checkpoint.load_config(tmp_path)["step"] == 1
    checkpoint.save(tmp_path, {"w": torch.zeros(2)}, {"step": 3})
    assert not half.exists() and checkpoint.load_config(tmp_path)["step"] == 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_during_a_checkpoint(tmp_path, monkeypatch, capsys, code):
    """The disk fills (or turns read-only) while a resumed run writes its checkpoint: one line
    naming the run and the checkpoint kept, exit 2; that checkpoint (step 2) is intact."""
    run = tmp_path / "up"
    argv = ["train", "--preset", "shapes-smoke", "--stage", "upsampler1", "--out", str(run)]
    assert main([*argv, "--steps", "2"]) == 0
    kept = checkpoint.load_weights(run)

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint, "save_file", full)
    capsys.readouterr()
    assert main([*argv, "--steps", "4", "--resume"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "cannot write a checkpoint in" in err[0], err
    assert os.strerror(code) in err[0] and "is kept" in err[0]
    monkeypatch.undo()
    after = checkpoint.load_weights(run)
    assert all(torch.equal(kept[k], after[k]) for k in kept)
    assert checkpoint.load_config(run)["step"] == 2
    assert not list(run.glob(".checkpoint-*"))


def test_disk_full_writing_a_cache_file_is_one_line(tmp_path, monkeypatch):
    """Every atomic write (embedding-cache shards, reports) fails in one line naming the file,
    and the file it would have replaced is left as it was."""
    from unclip_repro.errors import UserError

    target = tmp_path / "index.json"
    write_json(target, {"rows": [1]})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pathlib.Path.write_text", full)
    with pytest.raises(UserError, match=r"cannot write .*index.json: No space left"):
        write_json(target, {"rows": [2]})
    monkeypatch.undo()
    assert target.read_text().split() == ["{", '"rows":', "[", "1", "]", "}"]
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


@pytest.mark.parametrize(
    "name, damage",
    [
        (checkpoint.WEIGHTS, lambda b: b[: len(b) // 2]),
        (checkpoint.CONFIG, lambda b: b[:-40]),
        (checkpoint.STATE, lambda b: b[: len(b) // 3]),
    ],
)
def test_damaged_checkpoint_files_are_one_line_naming_the_file(tmp_path, capsys, name, damage):
    """A truncated file of a checkpoint: the command that reads it (sampling reads the
    weights, a resume the config and the training state) ends in one line naming it."""
    preset = override(get_preset("shapes-smoke"), {"train.upsampler1.steps": 2})
    run = tmp_path / "run"
    train(preset, "upsampler1", run, progress=False)
    file = checkpoint.resolve(run) / name
    file.write_bytes(damage(file.read_bytes()))
    if name == checkpoint.WEIGHTS:
        with pytest.raises(checkpoint.CheckpointError, match=f"corrupt .*{name}"):
            load_component(run)
        return
    argv = ["train", "--preset", "shapes-smoke", "--stage", "upsampler1", "--steps", "3"]
    assert main([*argv, "--out", str(run), "--resume"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "corrupt" in err[0] and name in err[0], err
