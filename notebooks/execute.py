"""`make notebooks`: execute every notebook in place at its teaching size, and time it.

    python notebooks/execute.py                  # 01 ... 09, then 00 (which shows their times)
    python notebooks/execute.py 05_decoder.ipynb # one notebook (00's table keeps the others)

The executed notebooks, outputs included, are what the repository holds, so GitHub shows
every figure. Each run's wall time is written into the notebook's own header (the line
`**Run time:** <!--time-->…<!--/time-->`) and into 00's syllabus table (`<!--time:05-->…`),
so a stated time is always the last measured one. Each notebook's metadata records a digest
of the shipped checkpoints it ran with; a test fails when they change and the outputs do not.
Seeds are fixed in each notebook; a notebook that raises stops the run with its error and is
left as it was.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

HERE = Path(__file__).resolve().parent
TIME = re.compile(r"<!--time-->.*?<!--/time-->")
TABLE = r"<!--time:{key}-->.*?<!--/time-->"


def checkpoints_digest() -> str:
    """A short sha256 of every file of the shipped checkpoints: the weights the outputs show."""
    root = HERE.parent / "unclip_repro" / "checkpoints"
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def execute(path: Path, timeout: int = 900) -> float:
    """Run `path` top to bottom in its folder, write it back with outputs; returns seconds."""
    nb = nbformat.read(path, as_version=4)
    env = os.environ.pop("UNCLIP_NOTEBOOK_QUICK", None)  # committed outputs: teaching size
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        if env is not None:
            os.environ["UNCLIP_NOTEBOOK_QUICK"] = env
    seconds = time.perf_counter() - start
    CoalesceStreamsPreprocessor().preprocess(nb, {})  # a progress bar's last state, not every flush
    nb.metadata["unclip_repro"] = {"checkpoints": checkpoints_digest()}
    stamp = f"<!--time-->{seconds / 60:.1f} min on {_cores()} CPU cores<!--/time-->"
    for cell in nb.cells:
        if cell.cell_type == "markdown" and TIME.search(cell.source):
            cell.source = TIME.sub(stamp, cell.source, count=1)
            break
    nbformat.write(nb, path)
    return seconds


def record_in_syllabus(times: dict[str, float]) -> None:
    """Write each measured time into 00's table, at `<!--time:NN-->…<!--/time-->`."""
    path = HERE / "00_overview.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for key, seconds in times.items():
            cell.source = re.sub(
                TABLE.format(key=key),
                f"<!--time:{key}-->{seconds / 60:.1f} min<!--/time-->",
                cell.source,
            )
    nbformat.write(nb, path)


def main(argv: list[str]) -> int:
    """Entry point; returns the exit status."""
    names = argv or sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb"))
    paths = [HERE / n if not Path(n).is_absolute() else Path(n) for n in names]
    paths = [p for p in paths if not p.name.startswith("00")] + [
        p for p in paths if p.name.startswith("00")
    ]  # 00 last: it shows the others' times
    times = {}
    for path in paths:
        if not path.exists():
            print(f"error: no notebook {path}", file=sys.stderr)
            return 2
        print(f"{path.name} ...", end=" ", flush=True)
        try:
            seconds = execute(path)
        except CellExecutionError as error:
            print(f"failed\nerror: {path.name}: {str(error).strip().splitlines()[-1]}")
            return 1
        times[path.name[:2]] = seconds
        print(f"{seconds / 60:.1f} min")
        if path.name.startswith("00"):
            continue
        record_in_syllabus({path.name[:2]: seconds})
    print(f"done {datetime.date.today()}: {sum(times.values()) / 60:.1f} min in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
