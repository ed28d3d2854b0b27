"""bench/gpu_check.py on the CPU: coco-smoke sizes, a tiny random CLIP, a few steps a stage."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "gpu_check.py"


def test_gpu_check_runs_on_cpu_and_writes_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "cpu", "--tiny", "--steps", "3", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = [row["stage"] for row in report["stages"]]
    assert stages == ["prior-diffusion", "prior-ar", "decoder", "glide", "upsampler1", "upsampler2"]
    for row in report["stages"]:
        assert row["step (s)"] > 0 and row["images/s"] > 0 and row["GFLOP/step"] > 0, row
    assert "| decoder" in (tmp_path / "gpu_check.md").read_text()
