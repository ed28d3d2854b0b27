"""The evaluation harness (eval/): the real COCO path on a folder the tests build, every kind of
bad input, caching and resumption, and the Shapes sweep and binding commands end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from eval import attribute_binding, coco_fid, features, generation, guidance_sweep, metrics
from unclip_repro.data import shapes

# ----------------------------------------------------------------------------- fixtures

N_GOOD = 40  # images in the COCO fixture that decode, of every mode
CAPTIONS = ["a red circle on the left", "a large blue square above a small green cross"]


def _make_coco(root, n_good=N_GOOD):
    """A COCO-format folder: RGB, L, CMYK, RGBA and P images, one truncated file, one missing
    file, a duplicate image entry, a duplicate caption and a caption of an unknown image."""
    images = root / "val"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries, annotations = [], []
    modes = ["RGB", "L", "CMYK", "RGBA", "P"]
    for i in range(n_good):
        mode = modes[i % len(modes)]
        pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        name = f"{i:03d}.{'jpg' if mode in ('RGB', 'L', 'CMYK') else 'png'}"
        image.save(images / name)
        entries.append({"id": i, "file_name": name})
        annotations.append({"id": 100 + i, "image_id": i, "caption": CAPTIONS[i % 2]})
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(images / "cut.jpg")
    data = (images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 3])  # truncated
    entries += [
        {"id": 900, "file_name": "cut.jpg"},
        {"id": 901, "file_name": "gone.jpg"},  # missing
        {"id": 0, "file_name": "000.jpg"},  # duplicate image entry
    ]
    annotations += [
        {"id": 100, "image_id": 0, "caption": CAPTIONS[0]},  # duplicate caption id
        {"id": 500, "image_id": 12345, "caption": "a giraffe"},  # unknown image
        {"id": 501, "image_id": 1, "caption": "a purple giraffe"},  # words CLIP never saw
    ]
    path = root / "captions_val.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations}))
    return path, images


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return _make_coco(tmp_path_factory.mktemp("coco"))


def _coco_args(smoke_runs, annotations, images, tmp_path, *extra):
    return [
        "--annotations",
        str(annotations),
        "--images",
        str(images),
        "--checkpoint",
        str(smoke_runs),
        "--num-captions",
        "6",
        "--batch-size",
        "4",
        "--resolution",
        "32",
        "--no-upsample",
        "--features",
        "clip",
        *_folders(tmp_path),
        *extra,
    ]


def _folders(tmp_path):
    """Where a run caches reference statistics, keeps generated chunks and reports."""
    return [
        "--cache-dir",
        str(tmp_path / "cache"),
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
    ]


def _shapes_args(smoke_runs, tmp_path, *extra):
    return ["--dataset", "shapes", "--checkpoint", str(smoke_runs), *_folders(tmp_path), *extra]


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], err[0]


# ----------------------------------------------------------------------------- COCO path


def test_coco_fid_counts_every_skip_and_resumes(smoke_runs, coco, tmp_path, capsys):
    annotations, images = coco
    argv = _coco_args(smoke_runs, annotations, images, tmp_path, "--num-captions", "50")
    assert coco_fid.main(argv) == 0  # 50 asked, 41 captions usable: all of them
    report = json.loads((tmp_path / "out" / "fid-coco.json").read_text())
    counts, ref = report["annotation_counts"], report["reference"]
    assert counts == {
        "duplicate_images": 1,
        "duplicate_captions": 1,
        "captions_of_unknown_images": 1,
        "unknown_caption_words": 1,  # giraffe (purple: a paraphrase of magenta)
    }
    assert ref["reference_images"] == N_GOOD and not ref["cached"]
    assert ref["skipped_missing"] == 1 and ref["skipped_unreadable"] == 1
    for mode in ("L", "CMYK", "RGBA", "P"):
        assert ref[f"mode_{mode}"] == N_GOOD // 5
    (row,) = report["rows"]
    assert row["images"] == N_GOOD + 1 and row["reference_images"] == N_GOOD
    assert np.isfinite(row["fid"]) and row["captions"] == 3  # two, and the giraffe
    err = capsys.readouterr().err
    assert "skipped 2 unreadable images" in err and "only 41 captions" in err

    chunks = sorted((tmp_path / "work").glob("coco-diffusion-*/chunk-*.safetensors"))
    assert len(chunks) == 11  # 41 captions in chunks of 4
    first = chunks[0].stat().st_mtime_ns
    chunks[-1].unlink()  # as if the run had stopped before its last chunk
    assert coco_fid.main(argv) == 0
    again = json.loads((tmp_path / "out" / "fid-coco.json").read_text())
    assert again["reference"]["cached"]  # reference statistics not recomputed
    assert chunks[0].stat().st_mtime_ns == first and chunks[-1].is_file()
    assert again["rows"][0]["fid"] == pytest.approx(row["fid"], rel=1e-5)


def test_coco_fid_reads_a_captions_csv(smoke_runs, coco, tmp_path):
    _, images = coco
    csv = tmp_path / "captions.csv"
    pd.DataFrame({"caption": CAPTIONS * 3}).to_csv(csv, index=False)
    argv = _coco_args(smoke_runs, "x", images, tmp_path)
    argv[:2] = ["--captions", str(csv)]
    assert coco_fid.main(argv) == 0
    report = json.loads((tmp_path / "out" / "fid-coco.json").read_text())
    assert report["rows"][0]["images"] == 6 and report["reference"]["reference_images"] == N_GOOD


def _break(kind, annotations, images, tmp_path):
    """A broken copy of the fixture: returns (annotations, images)."""
    data = json.loads(annotations.read_text())
    bad = tmp_path / "bad.json"
    if kind == "malformed json":
        bad.write_text(annotations.read_text()[:-10])
    elif kind == "no annotations":
        bad.write_text(json.dumps({"images": data["images"]}))
    elif kind == "caption missing":
        del data["annotations"][3]["caption"]
        bad.write_text(json.dumps(data))
    elif kind == "id names two files":
        data["images"].append({"id": 3, "file_name": "001.jpg"})
        bad.write_text(json.dumps(data))
    elif kind == "no captions":
        data["annotations"] = []
        bad.write_text(json.dumps(data))
    elif kind == "missing file":
        return tmp_path / "nope.json", images
    elif kind == "missing folder":
        return annotations, tmp_path / "nowhere"
    elif kind == "wrong folder":
        empty = tmp_path / "empty"
        empty.mkdir()
        return annotations, empty
    return bad, images


@pytest.mark.parametrize(
    "kind, words",
    [
        ("malformed json", ["not valid JSON"]),
        ("no annotations", ["'annotations'", "COCO captions file"]),
        ("caption missing", ["annotations[3]", "'caption'"]),
        ("id names two files", ["image id 3 names two files"]),
        ("no captions", ["no usable captions"]),
        ("missing file", ["no such annotations file"]),
        ("missing folder", ["no such image folder"]),
        ("wrong folder", ["42 of 42 images are missing or unreadable", "--images"]),
    ],
)
def test_bad_coco_input_is_one_line(kind, words, smoke_runs, coco, tmp_path, capsys):
    annotations, images = _break(kind, *coco, tmp_path)
    argv = _coco_args(smoke_runs, annotations, images, tmp_path)
    assert coco_fid.main(argv) == 2
    _one_line_error(capsys, *words)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--num-captions", "0"], ["--num-captions"]),
        (["--methods", "dalle"], ["dalle"]),
        (["--methods", "real"], ["--dataset shapes"]),
        (["--features", "inception"], [features.INCEPTION_FILE, "--inception-weights", "https"]),
    ],
)
def test_bad_options_are_one_line(extra, words, smoke_runs, coco, tmp_path, capsys):
    argv = _coco_args(smoke_runs, *coco, tmp_path, *extra)
    assert coco_fid.main(argv) == 2
    _one_line_error(capsys, *words)


def test_missing_or_mismatched_checkpoint(mismatched_runs, coco, tmp_path, capsys):
    argv = _coco_args(tmp_path / "none", *coco, tmp_path)
    assert coco_fid.main(argv) == 2
    _one_line_error(capsys, "no clip checkpoint")
    argv = _coco_args(mismatched_runs, *coco, tmp_path)
    assert coco_fid.main(argv) == 2
    _one_line_error(capsys, "another CLIP")


class _FakeInceptionLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.linear = torch.nn.Linear(48, 2048)

    def forward(self, x):
        return self.linear(self.pool(x).flatten(1))


class _FakeInception(torch.nn.Module):
    """Shaped like clean-fid's TorchScript file: a `layers` module giving 2048 features."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x):
        return self.layers(x)


def test_inception_path_reads_a_local_torchscript_file(smoke_runs, coco, tmp_path, capsys):
    weights = tmp_path / "my-inception.pt"  # any name: clean-fid's own is linked to it
    with pytest.warns(FutureWarning):  # TorchScript is deprecated; clean-fid's file is one
        torch.jit.save(torch.jit.script(_FakeInception()), str(weights))
    extractor = features.inception(weights)
    assert extractor(torch.rand(3, 3, 32, 32)).shape == (3, 2048)
    argv = _coco_args(smoke_runs, *coco, tmp_path, "--inception-weights", str(weights))
    argv[argv.index("clip")] = "inception"
    assert coco_fid.main(argv) == 0
    report = json.loads((tmp_path / "out" / "fid-coco.json").read_text())
    assert report["rows"][0]["features"].startswith("inception")
    not_torchscript = tmp_path / "inception-2015-12-05.pt"
    not_torchscript.write_bytes(b"not a network")
    argv[argv.index(str(weights))] = str(not_torchscript)
    capsys.readouterr()
    assert coco_fid.main(argv) == 2
    _one_line_error(capsys, "not clean-fid's TorchScript Inception")


def test_load_image_converts_modes_and_reports_bad_files(coco):
    _, images = coco
    for name, mode in [("001.jpg", "L"), ("002.jpg", "CMYK"), ("003.png", "RGBA")]:
        pixels, got = coco_fid.load_image(images / name, 16)
        assert got == mode and pixels.shape == (3, 16, 16) and 0 <= pixels.min() <= 1
    transparent = images.parent / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(transparent)
    pixels, _ = coco_fid.load_image(transparent, 8)
    assert torch.allclose(pixels, torch.ones_like(pixels))  # composited on white
    assert coco_fid.load_image(images / "cut.jpg", 8) == (None, "unreadable")
    assert coco_fid.load_image(images / "gone.jpg", 8) == (None, "missing")


# ----------------------------------------------------------------------------- Shapes path


def test_shapes_fid_runs_every_method_without_files(smoke_runs, tmp_path):
    methods = ["diffusion", "ar", "text", "none", "glide", "real"]
    argv = _shapes_args(
        smoke_runs, tmp_path, "--methods", *methods, "--num-captions", "8", "--batch-size", "8"
    )
    assert coco_fid.main(argv) == 0
    table = pd.read_csv(tmp_path / "out" / "fid-shapes.csv")
    assert list(table.method) == methods
    assert (table.images == 8).all() and table.fid.notna().all()
    fid = table.set_index("method").fid  # fresh renders beat a 3-step model by far
    assert fid["real"] < 0.5 * fid.drop("real").min()
    assert table.features.str.startswith("shapes-net:").all()


@pytest.mark.slow
def test_torchrun_shards_generation_across_ranks(smoke_runs, tmp_path):
    argv = _shapes_args(smoke_runs, tmp_path, "--num-captions", "12", "--batch-size", "4")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*torchrun, "-m", "eval.coco_fid", *argv], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "fid-shapes.json").read_text())
    assert report["rows"][0]["images"] == 12
    assert len(list((tmp_path / "work").glob("*/chunk-*.safetensors"))) == 3


# ----------------------------------------------------------------------------- metrics


def test_fid_is_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    same = metrics.fid(metrics.Stats.of(a), metrics.Stats.of(a))
    shifted = metrics.fid(metrics.Stats.of(a), metrics.Stats.of(a + [3, 0, 0, 0]))
    assert abs(same) < 1e-6 and shifted == pytest.approx(9, rel=1e-3)


def test_diversity_is_the_mean_pairwise_distance_within_a_caption():
    one_image = torch.zeros(3, 4, 2)  # 3 captions, 4 identical samples each
    assert metrics.diversity(one_image) == 0
    pair = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])  # one caption, samples 5 apart
    assert metrics.diversity(pair) == pytest.approx(5)


def test_precision_and_recall_tell_collapse_from_coverage():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 2))
    collapsed = np.repeat(real[:1], 100, axis=0) + 0.01 * rng.normal(size=(100, 2))
    covering = rng.normal(size=(400, 2))
    low = metrics.precision_recall(real, collapsed)
    high = metrics.precision_recall(real, covering)
    assert low["precision"] > 0.9 and low["recall"] < 0.1
    assert high["precision"] > 0.8 and high["recall"] > 0.8


def test_cached_stats_compute_once_and_recompute_a_damaged_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.random.default_rng(0).normal(size=(10, 3)), {"images": 10}

    stats, info = metrics.cached_stats(tmp_path, "k", compute)
    again, info2 = metrics.cached_stats(tmp_path, "k", compute)
    assert len(calls) == 1 and not info["cached"] and info2 == {"images": 10, "cached": True}
    assert np.allclose(stats.sigma, again.sigma)
    (tmp_path / "ref-k.npz").write_bytes(b"garbage")
    metrics.cached_stats(tmp_path, "k", compute)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- features


def test_shipped_shapes_features_tell_scenes_apart():
    """A redraw of a scene (same caption) lies nearer to it than a scene of another caption."""
    extractor = features.shapes_features()
    rng = np.random.default_rng(0)
    scenes = [shapes.random_scene(rng, split="any") for _ in range(40)]
    redrawn = [shapes.redraw(s, rng) for s in scenes]

    def embed(ss):
        return extractor(shapes.render_batch(ss, 32))

    a, b = embed(scenes), embed(redrawn)
    d = torch.cdist(a, b)
    same = d.diagonal()
    other = (d.sum(1) - same) / (len(d) - 1)
    assert (same < other).float().mean() > 0.9


def test_missing_shapes_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(features.MissingWeights, match="python -m eval.features"):
        features.shapes_features(tmp_path / "none.safetensors")


# ----------------------------------------------------------------------------- binding


def _two(colour_a="red", shape_a="square", size_a="large", colour_b="blue", shape_b="circle"):
    a = shapes.Object(colour_a, shape_a, size_a, 0.5, 0.25)
    b = shapes.Object(colour_b, shape_b, "small", 0.5, 0.75)
    return shapes.Scene([a, b], 0.3, "above")


def _flip(scene):
    """The same objects with the relation reversed (mirrored top to bottom)."""
    return shapes.Scene([replace(o, y=1 - o.y) for o in scene.objects], 0.3, "above")


@pytest.mark.parametrize(
    "drawn, outcome, checks",
    [
        (_two(), "bound", ("right", "right", "right")),
        # the colours on the other objects: every attribute is bound the wrong way
        (_two(colour_a="blue", colour_b="red"), "swapped", ("swapped", "swapped", "swapped")),
        (_two(colour_b="green"), "wrong colours", (None, None, None)),
        (shapes.Scene(_two().objects[:1], 0.3), "wrong count", (None, None, None)),
        (_flip(_two()), "swapped", ("right", "right", "swapped")),  # the blue one on top
        (_two(size_a="small"), "bound", ("right", None, "right")),  # sizes not told apart
        (_two(shape_a="circle"), "bound", (None, "right", "right")),
        (
            shapes.Scene(  # two small circles side by side: nothing to judge binding by
                [
                    shapes.Object("red", "circle", "small", 0.25, 0.5),
                    shapes.Object("blue", "circle", "small", 0.75, 0.5),
                ],
                0.3,
                "left of",
            ),
            "unjudged",
            (None, None, None),
        ),
    ],
)
def test_binding_of_known_images(drawn, outcome, checks):
    spec = shapes.scene_spec(_two())  # "a large red square above a small blue circle"
    image = shapes.to_tensor(shapes.render(drawn, 64))
    result = attribute_binding.classify(image, spec)
    assert result["outcome"] == outcome
    assert tuple(result[k] for k in attribute_binding.ATTRIBUTES) == checks


@pytest.mark.parametrize(
    "drawn, factors",
    [
        (_two(), (True, True, False, False)),
        (_two(shape_b="square"), (True, False, True, False)),  # one shape for both
        (_two(colour_b="red"), (True, False, False, True)),  # one colour for both
        (_two(colour_a="blue", colour_b="red"), (False, False, False, False)),  # swapped
        (shapes.Scene(_two().objects[1:], 0.3), (False, True, False, False)),  # one missing
    ],
)
def test_two_object_factors_of_known_images(drawn, factors):
    """eval.generation's two-object factors on clean renders of "a large red square above a
    small blue circle": each object drawn right, and a shape or colour drawn twice."""
    image = shapes.to_tensor(shapes.render(drawn, 64))
    result = generation.two_object_factors(image, _two())
    assert tuple(result[k] for k in generation.FACTORS) == factors


def test_swapped_sizes_alone():
    a, b = _two().objects
    drawn = shapes.Scene([replace(a, size="small"), replace(b, size="large")], 0.3, "above")
    image = shapes.to_tensor(shapes.render(drawn, 64))
    result = attribute_binding.classify(image, shapes.scene_spec(_two()))
    assert (result["outcome"], result["size"], result["shape"]) == ("swapped", "swapped", "right")


def test_binding_and_sweep_run_end_to_end(smoke_runs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    common = ["--checkpoint", str(smoke_runs), "--out", str(out), "--seed", "1"]
    assert (
        attribute_binding.main(
            [*common, "--num-captions", "4", "--splits", "train", "heldout", "--probe-scenes", "80"]
        )
        == 0
    )
    probe = json.loads((out / "attribute_binding.json").read_text())["z_i_probe"]
    assert 0 <= probe["left_colour"] <= 1 and probe["left_colour_n"] > 0
    table = pd.read_csv(out / "attribute_binding.csv")
    assert set(table.split) == {"train", "heldout"} and (table.n == 4).all()
    real = table[table.method == "real renders"]
    assert (real["all right"] == 1).all() and (real.bound == 1).all()  # the oracle is exact
    outcomes = table[list(attribute_binding.OUTCOMES)]
    assert np.allclose(outcomes.sum(1), 1)
    assert (out / "attribute_binding.png").stat().st_size > 10_000

    sweep = ["--scales", "1", "3", "--num-captions", "3", "--num-samples", "2"]
    sweep += ["--num-reference", "16", "--work-dir", str(tmp_path / "work")]
    assert guidance_sweep.main([*common, *sweep]) == 0
    table = pd.read_csv(out / "guidance_sweep.csv")
    # killed midway: the rows finished before are kept, the rest drawn again, the same table
    rows = sorted((tmp_path / "work").glob("*/*.json"))
    assert len(rows) == 3 * 2
    for row in rows[3:]:
        row.unlink()
    drawn = []
    real_generate = guidance_sweep.generate

    def counting(*args, **kwargs):
        drawn.append(1)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(guidance_sweep, "generate", counting)
    assert guidance_sweep.main([*common, *sweep]) == 0
    assert len(drawn) == 3
    again = pd.read_csv(out / "guidance_sweep.csv")
    pd.testing.assert_frame_equal(
        again.drop(columns="s_per_image"), table.drop(columns="s_per_image")
    )
    assert len(table) == 1 + 3 * 2 and table.fid.notna().all()
    real = table[table.method == guidance_sweep.REAL].iloc[0]
    assert real.oracle == 1 and real.diversity > 0
    assert "--num-reference 16" in json.loads((out / "guidance_sweep.json").read_text())["command"]
    # captions that leave attributes unstated: the real renders draw them afresh, so still
    # every stated attribute right, and more varied than fully stated captions' renders
    assert guidance_sweep.main([*common, *sweep, "--unstated", "0.6"]) == 0
    partial = pd.read_csv(out / "guidance_sweep.csv")
    loose = partial[partial.method == guidance_sweep.REAL].iloc[0]
    assert loose.oracle == 1 and loose.diversity > real.diversity


@pytest.mark.parametrize(
    "module, argv, words",
    [
        (guidance_sweep, ["--num-samples", "1"], ["--num-samples ≥ 2"]),
        (guidance_sweep, ["--methods", "dalle"], ["dalle"]),
        (guidance_sweep, ["--unstated", "1"], ["--unstated"]),
        (attribute_binding, ["--num-captions", "0"], ["--num-captions"]),
        (attribute_binding, ["--checkpoint", "/nowhere"], ["no clip checkpoint"]),
    ],
)
def test_sweep_and_binding_bad_input(module, argv, words, capsys):
    assert module.main(argv) == 2
    _one_line_error(capsys, *words)


def test_manipulations_measure_every_manipulation(smoke_runs, tmp_path):
    """eval.manipulations writes its tables and figure; at amount 0 nothing is edited."""
    from eval import manipulations

    argv = ["--checkpoint", str(smoke_runs), "--out", str(tmp_path), "--num-captions", "2"]
    argv += ["--steps", "2", "--guidance", "1", "--etas", "0.5", "--sample-steps", "3"]
    assert manipulations.main(argv) == 0
    table = pd.read_csv(tmp_path / "manipulations.csv")
    assert set(table.measure) == set(manipulations.MEASURES)
    assert set(table[table.measure == "variations"].objects) == {1, 2}
    diffs = table[table.measure == "text_diffs"]
    assert set(diffs.method) == {"text", "image", "prior", "caption"} and set(
        diffs.attribute
    ) == set(manipulations.ATTRIBUTES)
    # z_i unmoved and no caption read: no edit ("caption" at λ = 0 edits by the caption alone)
    unmoved = diffs[(diffs.amount == 0) & (diffs.method == "text")]
    assert len(unmoved) == len(manipulations.ATTRIBUTES) and (unmoved.success == 0).all()
    report = (tmp_path / "manipulations.md").read_text()
    assert "## Reconstruction" in report and "## Text diffs" in report and "%–" in report
    assert (tmp_path / "manipulations.png").stat().st_size > 10_000


def test_edit_scores_on_clean_renders():
    """The text-diff score on renders: the edit drawn exactly scores 100% success and 100%
    preserved; the image left as it was 0% success, 100% preserved; another attribute edited
    instead, 0% success and 0% preserved."""
    from eval import manipulations

    rng = np.random.default_rng(0)
    scenes, _ = metrics.scene_set("manipulations", 12, 0, n_objects=1)
    specs = [shapes.scene_spec(s) for s in scenes]
    render = lambda specs: shapes.render_batch(  # noqa: E731
        [shapes.realise(s, rng) for s in specs], 32
    )
    for attribute, other in (("colour", "shape"), ("size", "position"), ("shape", "colour")):
        edits = [manipulations._edit(s, attribute, rng) for s in specs]
        wrong = [manipulations._edit(s, other, rng) for s in specs]
        for images, success, kept in ((render(edits), 1, 1), (render(specs), 0, 1),
                                      (render(wrong), 0, 0)):  # fmt: skip
            got = manipulations.score_edits(images, specs, edits, attribute)
            assert (got[0].mean(), got[1].mean()) == (success, kept), attribute


class _HalvesClip:
    """A stand-in CLIP whose 'z_i' is each half's mean colour (binds colour to place), or the
    whole image's (a bag of colours)."""

    def __init__(self, halves: bool):
        self.halves = halves

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        w = images.shape[-1] // 2
        if self.halves:
            return torch.cat([images[..., :w].mean((2, 3)), images[..., w:].mean((2, 3))], 1)
        return images.mean((2, 3))


def test_binding_probe_tells_an_embedding_that_binds_from_a_bag():
    from eval.clip_report import binding_probe

    bound = binding_probe(_HalvesClip(True), 32, n_fit=600, n_test=300)
    bag = binding_probe(_HalvesClip(False), 32, n_fit=600, n_test=300)
    assert bound["left_colour"] > 0.85 and bag["left_colour"] < 0.65
    assert bound["left_colour_n"] == bag["left_colour_n"] > 50
