"""The notebooks' code solutions work: each `notebooks/solutions/sNN.py` has a `check()`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOLUTIONS = sorted((Path(__file__).parents[1] / "notebooks" / "solutions").glob("s[0-9][0-9]*.py"))


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_checks(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.check()  # asserts that the solution does what its exercise asks
