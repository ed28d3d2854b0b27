"""The command line: bad input gets one line on stderr and a non-zero exit."""

import subprocess
import sys

import pytest

from unclip_repro import checkpoint
from unclip_repro.__main__ import main


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def _one_line_error(captured, *words):
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--preset", "nope", "--stage", "clip", "--out", "x"], ["nope", "shapes-smoke"]),
        (["train", "--preset", "shapes-smoke", "--stage", "nope", "--out", "x"], ["nope", "clip"]),
        (["train", "--stage", "clip"], ["--out"]),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "clip", "--steps", "0", "--out", "x"],
            ["--steps"],
        ),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_arguments(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    code, captured = _run(capsys, *argv)
    assert code == 2
    _one_line_error(captured, *words)


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, captured = _run(
        capsys,
        "train",
        "--preset",
        "shapes-smoke",
        "--stage",
        "clip",
        "--out",
        str(blocker / "run"),
    )
    assert code == 2
    _one_line_error(captured, "cannot write", str(blocker))


def test_existing_missing_corrupt_and_mismatched_checkpoints(capsys, tmp_path):
    run = str(tmp_path / "run")
    smoke = ["train", "--preset", "shapes-smoke", "--stage", "clip", "--out", run]
    code, captured = _run(capsys, *smoke, "--steps", "2", "--resume")
    assert code == 2
    _one_line_error(captured, "nothing to resume")
    code, captured = _run(capsys, *smoke, "--steps", "2")
    assert code == 0 and "step 2" in captured.out
    code, captured = _run(capsys, *smoke, "--steps", "3")
    assert code == 2
    _one_line_error(captured, "--resume")
    mismatched = ["train", "--preset", "shapes", "--stage", "clip", "--out", run, "--resume"]
    code, captured = _run(capsys, *mismatched)
    assert code == 2
    _one_line_error(captured, "shapes-smoke")
    (checkpoint.resolve(run) / "train_state.pt").write_bytes(b"garbage")
    code, captured = _run(capsys, *smoke, "--steps", "3", "--resume")
    assert code == 2
    _one_line_error(captured, "corrupt")


def test_module_entry_point_exit_code(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "unclip_repro", "train", "--preset", "x", "--stage", "clip"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
