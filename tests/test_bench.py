"""bench/recipe.py end to end on shapes-smoke (train, resume, report, one-line errors), the
recipe files it ships, and the eval flags the removed bench scripts folded into."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from eval import generation, oracle_check
from eval.metrics import set_sampling
from unclip_repro import checkpoint
from unclip_repro.components import STAGES
from unclip_repro.config import get_preset, override, read_overrides
from unclip_repro.errors import UserError

BENCH = Path(__file__).parents[1] / "bench"

SMOKE = """\
[recipe]
preset = "shapes-smoke"
stages = ["clip", "glide"]
methods = ["glide"]
splits = ["train"]
objects = [1]
num_captions = 2
posthoc = [0.1]

[train.clip]
steps = 3

[train.glide]
steps = 3
seed = 1
ema_snapshot_every = 2
"""


def _recipe():  # noqa: ANN202
    """bench/recipe.py as a module (registered first: its dataclass looks itself up there)."""
    if "bench_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_recipe", BENCH / "recipe.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_recipe"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_recipe"]


def test_recipe_trains_scores_and_resumes(tmp_path, capsys):
    """A recipe trains its stages into OUT and writes report.md and report.csv; run again it
    trains nothing new (every stage resumed at its last step) and scores again."""
    recipe = _recipe()
    path, out = tmp_path / "smoke.toml", tmp_path / "out"
    path.write_text(SMOKE)
    assert recipe.main([str(path), "--out", str(out)]) == 0
    for stage in ("clip", "glide"):
        assert checkpoint.load_config(out / stage)["step"] == 3
    saved = checkpoint.load_config(out / "glide")["preset"]
    assert saved["overrides"] == {
        "train.clip.steps": 3,
        "train.glide.steps": 3,
        "train.glide.seed": 1,
        "train.glide.ema_snapshot_every": 2,
    }
    report = (out / "report.md").read_text()
    assert SMOKE.strip() in report  # the recipe file itself
    assert "python bench/recipe.py" in report and "## Training" in report
    assert "GLIDE baseline" in report and "Wilson" in report
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0] == "score,method,objects,split,n,measure,value,lo,hi"
    assert len(rows) == 1 + 2 * 6  # one method, one caption set, six attributes; two EMAs
    assert sum("GLIDE baseline (EMA σ_rel 0.1)" in row for row in rows) == 6
    assert "## Post-hoc EMA σ_rel 0.1: glide after 3 steps" in report
    weights = checkpoint.resolve(out / "glide") / checkpoint.WEIGHTS
    log, mtime = (out / "glide" / "log.csv").read_text(), weights.stat().st_mtime_ns
    capsys.readouterr()

    assert recipe.main([str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clip: step 3 of 3" in printed and "glide: step 3 of 3" in printed
    assert (out / "glide" / "log.csv").read_text() == log
    assert weights.stat().st_mtime_ns == mtime
    lines = (out / "report.md").read_text().splitlines()
    glide = next(line for line in lines if line.startswith("| glide "))
    assert [c.strip() for c in glide.split("|")[2:4]] == ["3", "0"]  # steps, this sitting


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[recipe]\npreset = "shapes-smoke"\n[decoder]\nguidanse = 3\n', "did you mean guidance"),
        ('[recipe]\nstagez = ["glide"]\n', "unknown setting 'recipe.stagez'"),
        ('[recipe]\nstages = ["glid"]\n', "recipe.stages: unknown 'glid'"),
        ("[recipe\n", "is not a TOML override file"),
    ],
)
def test_bad_recipe_is_one_line(text, words, tmp_path, capsys):
    path, out = tmp_path / "bad.toml", tmp_path / "out"
    path.write_text(text)
    assert _recipe().main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err
    assert not any(out.glob("*/"))  # nothing trained


def test_missing_recipe_file_is_one_line(tmp_path, capsys):
    assert _recipe().main([str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such override file: {tmp_path}/none.toml"


@pytest.mark.parametrize("path", sorted((BENCH / "recipes").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_read_and_apply_to_their_preset(path):
    """Every file in bench/recipes/ is a valid recipe: its [recipe] table, and its overrides
    applied to its preset, with each stage's init a component or an earlier stage."""
    recipe, rest = _recipe().split_recipe(read_overrides(path))
    assert recipe.stages and path.read_text().startswith("#")  # says what it measures
    preset = override(get_preset(recipe.preset), rest)
    for stage in recipe.stages:
        assert preset.train[stage].init in (None, "", *STAGES)


def test_set_sampling_changes_only_sampling_settings():
    decoder = STAGES["decoder"].build(get_preset("shapes-smoke"))
    set_sampling({"decoder": decoder}, {"decoder.guidance": 5, "decoder.eta": 0})
    assert decoder.cfg.guidance == 5.0 and decoder.cfg.eta == 0.0
    with pytest.raises(UserError, match="not a sampling setting"):
        set_sampling({"decoder": decoder}, {"decoder.prediction": "x0"})


def test_generation_flags_sampling_and_confusion(smoke_runs, tmp_path):
    """eval.generation's flags from bench/decoder_sampling.py: methods, caption sets, a
    sampling setting and the shape confusion table."""
    argv = ["--checkpoint", str(smoke_runs), "--methods", "true,none", "--splits", "train",
            "--objects", "1", "--num-captions", "3", "--set", "decoder.sample_steps=2",
            "--confusion", "--out", str(tmp_path)]  # fmt: skip
    assert generation.main(argv) == 0
    report = (tmp_path / "generation.md").read_text()
    assert "## 1 object, train captions (n = 3)" in report and "2 objects" not in report
    assert report.count("shape asked (rows) × shape read") == 2
    assert "| asked" in report
    rows = (tmp_path / "generation.csv").read_text().splitlines()
    assert len(rows) == 1 + 2
    assert generation.main([*argv[:-2], "--set", "decoder.prediction=x0"]) == 2


def test_interval_is_wilson():
    lo, hi = generation.interval(0.0, 2)
    assert lo == 0.0 and round(hi, 4) == 0.6576
    lo, hi = generation.interval(0.9, 200)
    assert round(lo, 3) == 0.851 and round(hi, 3) == 0.934


def test_oracle_check_writes_its_json(tmp_path):
    assert oracle_check.main(["--num-captions", "5", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "oracle.json").read_text())
    assert report["n"] == 5 and report["accuracy_32"] == 1.0
    assert report["accuracy_on_noise_32"] == 0.0


def test_ablation_table_puts_each_lever_beside_the_baseline(tmp_path):
    """bench/ablation.py: a run's shares and training time per lever, the gain in two-object
    captions against the baseline's run, and 'not run' for a lever without a report."""
    spec = importlib.util.spec_from_file_location("bench_ablation", BENCH / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    header = "score,method,objects,split,n,measure,value,lo,hi\n"
    for folder, all2, minutes in (("glide-posthoc", 0.05, 90), ("glide-two75", 0.08, 93)):
        checkpoint.save(tmp_path / folder / "glide", {"w": torch.zeros(1)},
                        {"component": "glide", "train_seconds": minutes * 60})  # fmt: skip
        rows = ["generation,GLIDE baseline,1,train,500,all,0.85,0.82,0.88",
                f"generation,GLIDE baseline,2,train,500,all,{all2},0.03,0.1",
                "generation,GLIDE baseline,2,train,500,shape_leak,0.4,0.36,0.44"]  # fmt: skip
        (tmp_path / folder / "report.csv").write_text(header + "\n".join(rows) + "\n")
    frame = ablation.table(tmp_path).set_index("run")
    base, two75 = frame.loc["glide-posthoc"].iloc[0], frame.loc["glide-two75"]
    assert base["1 object: all"] == "85% (82%–88%)" and base["2 objects: shape_leak"] == "40%"
    assert two75["Δ 2 objects: all (points)"] == "+3.0" and two75["extra train min"] == "+3"
    assert two75["2 objects: relation"] == "–"
    assert frame.loc["glide-wide", "train min"] == "not run"
