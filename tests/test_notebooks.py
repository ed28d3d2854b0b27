"""The committed notebooks are executed ones: outputs, figures, no errors, exercises.

nbmake (in `make test`) runs each notebook again at its quick size; these tests check what
GitHub shows a reader, the versions `make notebooks` wrote.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_BYTES = 2_500_000  # a notebook's images are PNGs at modest dpi, not megapixel plots


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_top_to_bottom_without_errors(path):
    nb = nbformat.read(path, as_version=4)
    counts = [c.execution_count for c in _code_cells(nb)]
    assert None not in counts, f"{path.name}: a code cell was never executed (make notebooks)"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not run top to bottom once"
    errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_has_figures_and_stays_compact(path):
    nb = nbformat.read(path, as_version=4)
    images = [o for c in _code_cells(nb) for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure in the committed outputs"
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_links_the_paper_and_states_its_measured_time(path):
    header = nbformat.read(path, as_version=4).cells[0].source
    assert "arxiv.org/abs/" in header, f"{path.name}: the first cell links no paper"
    assert re.search(r"<!--time-->\d+\.\d min on \d+ CPU cores<!--/time-->", header), (
        f"{path.name}: no measured run time in the first cell (make notebooks writes it)"
    )


TAUGHT = [p for p in NOTEBOOKS if "01" <= p.name[:2] <= "08"]


@pytest.mark.parametrize("path", TAUGHT, ids=lambda p: p.name)
def test_closes_with_exercises_and_solutions(path):
    cells = nbformat.read(path, as_version=4).cells
    markdown = [c for c in cells if c.cell_type == "markdown"]
    headings = [c for c in markdown if re.match(r"#+ Exercise", c.source)]
    assert 2 <= len(headings) <= 4, f"{path.name}: {len(headings)} exercises, want 2-4"
    text = "\n".join(c.source for c in markdown)
    assert text.count("<summary>Solution") >= len(headings), f"{path.name}: a solution missing"


def test_quick_mode_is_read_by_every_parameter_cell():
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in _code_cells(nbformat.read(path, as_version=4))[:2])
        assert "UNCLIP_NOTEBOOK_QUICK" in source, path.name


def test_outputs_were_made_with_the_shipped_checkpoints():
    spec = importlib.util.spec_from_file_location("execute", NOTEBOOKS[0].parent / "execute.py")
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    digest = execute.checkpoints_digest()
    for path in NOTEBOOKS:
        made_with = nbformat.read(path, as_version=4).metadata.get("unclip_repro", {})
        assert made_with.get("checkpoints") == digest, (
            f"{path.name}: its outputs were made with other checkpoints: run make notebooks"
        )
