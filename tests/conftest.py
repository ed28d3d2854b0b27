"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil

import pytest

from unclip_repro.components import COMPONENTS
from unclip_repro.config import get_preset
from unclip_repro.train import train


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    """Every component of the smoke preset, trained for three steps (read-only: copy to change)."""
    runs = tmp_path_factory.mktemp("runs")
    for stage in COMPONENTS:
        train(get_preset("shapes-smoke"), stage, runs / stage, steps=3, progress=False)
    return runs


@pytest.fixture(scope="session")
def mismatched_runs(smoke_runs, tmp_path_factory):
    """The smoke components beside a CLIP they were not trained on."""
    mixed = tmp_path_factory.mktemp("mixed") / "runs"
    shutil.copytree(smoke_runs, mixed)
    shutil.rmtree(mixed / "clip")
    train(get_preset("shapes-smoke"), "clip", mixed / "clip", steps=2, progress=False)
    return mixed
