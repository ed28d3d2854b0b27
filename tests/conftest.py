"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil

import pytest

from unclip_repro.components import STAGES
from unclip_repro.config import get_preset, override
from unclip_repro.train import train


def smoke_steps(stage: str, steps: int):
    """The shapes-smoke preset with `stage` trained for `steps`."""
    return override(get_preset("shapes-smoke"), {f"train.{stage}.steps": steps})


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    """Every component of the smoke preset, trained for three steps (read-only: copy to change)."""
    runs = tmp_path_factory.mktemp("runs")
    for stage in STAGES:
        train(smoke_steps(stage, 3), stage, runs / stage, progress=False)
    return runs


@pytest.fixture(scope="session")
def mismatched_runs(smoke_runs, tmp_path_factory):
    """The smoke components beside a CLIP they were not trained on."""
    mixed = tmp_path_factory.mktemp("mixed") / "runs"
    shutil.copytree(smoke_runs, mixed)
    shutil.rmtree(mixed / "clip")
    train(smoke_steps("clip", 2), "clip", mixed / "clip", progress=False)
    return mixed
