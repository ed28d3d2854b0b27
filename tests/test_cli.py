"""The command line: bad input gets one line on stderr and a non-zero exit."""

import json
import subprocess
import sys

import pytest
import torch

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
        (  # --steps is applied to the stage's settings: the stage is checked first
            ["train", "--preset", "shapes-smoke", "--stage", "nope", "--steps", "3", "--out", "x"],
            ["nope", "clip"],
        ),
        (["train", "--stage", "clip"], ["--out"]),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "clip", "--steps", "0", "--out", "x"],
            ["--steps"],
        ),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "clip", "--set", "train.accumulate=0"]
            + ["--out", "x"],
            ["accumulate", "at least 1"],
        ),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "glide", "--set", "decodr.eta=1"]
            + ["--out", "x"],
            ["unknown setting", "decodr", "did you mean decoder"],
        ),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "glide", "--set", "decoder.eta=hi"]
            + ["--out", "x"],
            ["decoder.eta takes a float", "hi"],
        ),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "glide", "--set", "decoder"]
            + ["--out", "x"],
            ["KEY=VALUE"],
        ),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "glide", "--set", "decoder.unet=1"]
            + ["--out", "x"],
            ["decoder.unet is a group"],
        ),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "glide", "--overrides", "no.toml"]
            + ["--out", "x"],
            ["no such override file", "no.toml"],
        ),
        (["train-all", "--preset", "shapes-smoke", "--stages", "glide,nope"], ["nope", "decoder"]),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "clip", "--init", "nowhere"]
            + ["--out", "x"],
            ["nowhere"],
        ),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "clip", "--init", "a", "--resume"]
            + ["--out", "x"],
            ["--init", "--resume"],
        ),
        (["frobnicate"], ["frobnicate"]),
        (
            ["train", "--preset", "shapes-smoke", "--stage", "prior-ar", "--out", "r/prior-ar"],
            ["no trained CLIP", "--clip"],
        ),
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
    _one_line_error(captured, "other settings", "clip.")
    code, captured = _run(capsys, *smoke, "--steps", "3", "--resume")
    assert code == 2
    _one_line_error(captured, "cosine schedule", "--init")
    (checkpoint.resolve(run) / "train_state.pt").write_bytes(b"garbage")
    code, captured = _run(capsys, *smoke, "--steps", "2", "--resume")
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


def test_train_all_and_demo_report_and_retrain_over_a_stale_checkpoint(capsys, tmp_path):
    from eval import demo
    from unclip_repro.config import get_preset
    from unclip_repro.train import train

    stale = get_preset("shapes-smoke")
    stale.train["clip"].lr = 0.5  # a checkpoint made by other settings, e.g. an older version
    stale.train["clip"].steps = 2
    train(stale, "clip", tmp_path / "runs" / "shapes-smoke" / "clip", progress=False)
    argv = ["train-all", "--preset", "shapes-smoke", "--runs", str(tmp_path / "runs")]
    code, captured = _run(capsys, *argv)
    assert code == 0, captured.err
    assert "training anew" in captured.out
    runs = tmp_path / "runs" / "shapes-smoke"
    from unclip_repro.components import STAGES

    # the decoder trained after GLIDE, from its weights (the preset's `init`); every stage timed
    assert captured.out.index("] glide:") < captured.out.index("] decoder:")
    assert set(json.loads((runs / "timing.json").read_text())["seconds_this_sitting"]) == set(
        STAGES
    )
    report = ["--checkpoint", str(runs), "--out", str(tmp_path / "out"), "--num-eval", "40"]
    assert demo.main([*report, "--num-captions", "2"]) == 0
    captured = capsys.readouterr()
    assert "retrieval top-1" in captured.out
    generation = (tmp_path / "out" / "generation.md").read_text()
    assert "GLIDE baseline" in generation and "unCLIP, diffusion prior" in generation
    for figure in ("generation", "samples", "variations", "interpolation", "textdiff"):
        assert (tmp_path / "out" / f"{figure}.png").stat().st_size > 1000
    assert len(list((tmp_path / "runs" / "shapes-smoke").glob("clip.stale-*"))) == 1
    report = json.loads((tmp_path / "out" / "clip_report.json").read_text())
    assert report["n"] == 40 and 0 <= report["colour"] <= 1
    assert (tmp_path / "out" / "clip_retrieval.png").stat().st_size > 10_000
    priors = (tmp_path / "out" / "priors.md").read_text()
    assert "diffusion prior" in priors and "AR prior" in priors and "text embedding" in priors
    code, captured = _run(capsys, *argv)
    assert code == 0 and "training anew" not in captured.out  # a finished run is reused
    code, captured = _run(capsys, *argv, "--stages", "upsampler1")  # trained here, no decoder
    assert code == 0 and "[1/1] upsampler1" in captured.out, captured.err
    # shipping: fp16 parameters, float32 buffers, same identity, loadable
    code, captured = _run(capsys, "export", "--runs", str(runs), "--out", str(tmp_path / "ship"))
    assert code == 0, captured.err
    from unclip_repro.pipeline import UnCLIP

    for stage in STAGES:
        assert not (tmp_path / "ship" / stage / "train_state.pt").exists()
        assert checkpoint.identity(tmp_path / "ship" / stage) == checkpoint.identity(runs / stage)
    model = UnCLIP.load(tmp_path / "ship")  # every shipped component loads, on the one CLIP
    assert model.glide is not None and len(model.upsamplers) == 2 and "ar" in model.priors
    weights = checkpoint.load_file(tmp_path / "ship" / "prior-ar" / "model.safetensors")
    assert str(weights["pca.components"].dtype) == "torch.float32"
    assert str(weights["head_bias"].dtype) == "torch.float16"
    code, captured = _run(capsys, "export", "--runs", str(tmp_path / "nothing"), "--out", "x")
    assert code == 2 and "no trained components" in captured.err


def test_sampling_commands_write_grids_and_warn_of_unknown_words(capsys, tmp_path, smoke_runs):
    from PIL import Image
    from torchvision.utils import save_image

    common = ["--checkpoint", str(smoke_runs), "--num-samples", "2"]
    code, captured = _run(
        capsys, "sample", "--caption", "a zebra circle", *common, "--out", str(tmp_path / "s.png")
    )
    assert code == 0, captured.err
    assert captured.err.strip() == "warning: words never seen in training, read as 'unknown': zebra"
    with Image.open(tmp_path / "s.png") as grid:  # 2 images of 128 px, 2 px padding
        assert grid.size == (2 + 2 * 130, 2 + 130)
    save_image(torch.rand(3, 48, 48), tmp_path / "in.png")  # any size: resized to 32 px
    image = ["--image", str(tmp_path / "in.png")]
    for argv in (
        ["vary", *image],
        [
            "interpolate",
            "--image-a",
            str(tmp_path / "in.png"),
            "--image-b",
            str(tmp_path / "in.png"),
        ],
        ["textdiff", *image, "--from", "a red circle", "--to", "a red square"],
    ):
        code, captured = _run(capsys, *argv, *common, "--out", str(tmp_path / f"{argv[0]}.png"))
        assert code == 0 and captured.err == "", captured.err
        assert (tmp_path / f"{argv[0]}.png").stat().st_size > 1000


def test_sampling_commands_refuse_bad_input_in_one_line(
    capsys, tmp_path, smoke_runs, mismatched_runs
):
    (tmp_path / "notes.png").write_text("not an image")
    out = ["--out", str(tmp_path / "out.png")]
    checkpoint_ = ["--checkpoint", str(smoke_runs)]
    code, captured = _run(
        capsys, "vary", "--image", str(tmp_path / "notes.png"), *checkpoint_, *out
    )
    assert code == 2
    _one_line_error(captured, "notes.png", "not an image")
    code, captured = _run(capsys, "vary", "--image", str(tmp_path / "gone.png"), *checkpoint_, *out)
    assert code == 2
    _one_line_error(captured, "no such image file", "gone.png")
    code, captured = _run(
        capsys, "sample", "--caption", "a red circle", "--checkpoint", "nowhere", *out
    )
    assert code == 2
    _one_line_error(captured, "no clip checkpoint", "nowhere")
    code, captured = _run(
        capsys, "sample", "--caption", "a red circle", "--checkpoint", str(mismatched_runs), *out
    )
    assert code == 2
    _one_line_error(captured, "another CLIP")
    for argv, flag in (
        (["sample", "--caption", "  "], "--caption"),
        (["textdiff", "--image", str(tmp_path / "gone.png"), "--from", "", "--to", "a"], "--from"),
    ):
        code, captured = _run(capsys, *argv, *checkpoint_, *out)
        assert code == 2
        _one_line_error(captured, f"{flag} is empty")
    assert not (tmp_path / "out.png").exists()


def test_overrides_file_then_set_change_the_run_and_are_recorded(capsys, tmp_path):
    """An override file applies first, then each --set (a later value wins), then --steps;
    the run trains with them and its checkpoint records them."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[train.clip]\nlr = 2e-3\nseed = 5\n\n[clip]\ntext_layers = 1\n")
    out = tmp_path / "run"
    argv = ["train", "--preset", "shapes-smoke", "--stage", "clip", "--out", str(out)]
    argv += ["--overrides", str(recipe), "--set", "train.seed=7", "--steps", "2"]
    code, captured = _run(capsys, *argv)
    assert code == 0, captured.err
    preset = checkpoint.load_config(out)["preset"]
    assert preset["clip"]["text_layers"] == 1 and preset["train"]["clip"]["seed"] == 7
    assert preset["overrides"] == {
        "train.clip.lr": 2e-3,
        "train.clip.seed": 7,
        "clip.text_layers": 1,
        "train.clip.steps": 2,
    }
    recipe.write_text("[train.clip]\nlr = [\n")
    code, captured = _run(capsys, *argv)
    assert code == 2
    _one_line_error(captured, "not a TOML override file", "recipe.toml")
