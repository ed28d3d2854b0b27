"""The oracle: right on clean renders, fooled by nothing else, and strict about binding."""

import time

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import torch

from unclip_repro.data.oracle import Detected, detect, score, score_batch
from unclip_repro.data.shapes import Object, Scene, caption, random_scene, render

RED_CIRCLE_ABOVE_BLUE_SQUARE = Scene(
    [
        Object("red", "circle", "large", 0.45, 0.27),
        Object("blue", "square", "large", 0.55, 0.72, 8),
    ],
    background=0.25,
    relation="above",
)


def random_scenes(n: int, seed: int) -> list[Scene]:
    """Scenes of 1 and 2 objects from every split."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, split=("train", "heldout", "any")[i % 3]) for i in range(n)]


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_oracle_is_right_on_clean_renders(resolution):
    rng = np.random.default_rng(resolution)
    scenes = random_scenes(300, seed=resolution)
    images = [render(s, resolution) for s in scenes]
    captions = [caption(s, rng) for s in scenes]
    start = time.perf_counter()
    results = [score(image, text) for image, text in zip(images, captions, strict=True)]
    ms = (time.perf_counter() - start) / len(images) * 1000
    accuracy = np.mean([r["all"] for r in results])
    print(f"oracle at {resolution}px: all-correct {accuracy:.4f} on 300 scenes, {ms:.2f} ms/image")
    assert accuracy >= 0.99


def test_oracle_tolerates_mild_blur_and_noise():
    rng = np.random.default_rng(0)
    scenes = random_scenes(100, seed=1)
    correct = 0
    for scene in scenes:
        image = render(scene, 32).astype(np.float32) / 255
        image = scipy.ndimage.gaussian_filter(image, (0.5, 0.5, 0))
        image = image + rng.normal(0, 0.03, image.shape)
        correct += score(np.clip(image, 0, 1), caption(scene))["all"]
    assert correct >= 95


def test_noise_and_blank_images_score_nothing():
    rng = np.random.default_rng(0)
    hits = 0
    for scene in random_scenes(100, seed=2):
        text = caption(scene, rng)
        blank = np.full((32, 32, 3), rng.uniform(0.1, 0.5), np.float32)
        for image in (rng.random((32, 32, 3)), rng.integers(0, 256, (64, 64, 3), np.uint8), blank):
            hits += score(image, text)["all"]
    assert hits <= 2
    assert detect(np.zeros((3, 32, 32), np.float32)) == []


def test_detect_reads_objects_in_any_layout():
    image = render(RED_CIRCLE_ABOVE_BLUE_SQUARE, 64)
    circle, square = sorted(detect(image), key=lambda d: d.shape)
    assert (square.colour, square.shape, square.size) == ("blue", "square", "large")
    assert (circle.colour, circle.shape, circle.size) == ("red", "circle", "large")
    assert circle.x == pytest.approx(0.45, abs=0.01) and circle.y == pytest.approx(0.27, abs=0.01)
    assert isinstance(circle, Detected) and 0.05 < circle.area < 0.15
    chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # (3, H, W)
    assert detect(chw) == detect(chw.numpy()) == detect(image.astype(np.float32) / 255)
    assert [d.area for d in detect(image)] == sorted([circle.area, square.area], reverse=True)


def test_swapped_colours_break_binding():
    text = caption(RED_CIRCLE_ABOVE_BLUE_SQUARE)
    assert text == "a large red circle above a large blue square"
    assert all(score(render(RED_CIRCLE_ABOVE_BLUE_SQUARE, 32), text).values())
    circle, square = RED_CIRCLE_ABOVE_BLUE_SQUARE.objects
    swapped = Scene(
        [
            Object("blue", "circle", "large", circle.x, circle.y),
            Object("red", "square", "large", square.x, square.y, 8),
        ],
        background=0.25,
        relation="above",
    )
    result = score(render(swapped, 32), text)
    assert not result["all"] and not result["colour"]
    assert result["shape"] and result["relation"] and result["count"]


def test_wrong_relation_is_noticed():
    text = caption(RED_CIRCLE_ABOVE_BLUE_SQUARE)
    circle, square = RED_CIRCLE_ABOVE_BLUE_SQUARE.objects
    moved = Scene(
        [
            Object("red", "circle", "large", square.x, square.y),
            Object("blue", "square", "large", circle.x, circle.y),
        ],
        background=0.25,
        relation="below",
    )
    result = score(render(moved, 32), text)
    assert not result["all"] and not result["relation"]
    assert result["colour"] and result["shape"] and result["size"]


def test_count_and_partial_captions():
    image = render(RED_CIRCLE_ABOVE_BLUE_SQUARE, 32)
    one = score(image, "a large red circle in the middle")
    assert one["colour"] and one["shape"] and one["position"] and not one["count"]
    assert not one["all"]
    assert score(image, "a red circle above a square") == {
        "colour": True,
        "shape": True,
        "relation": True,
        "count": True,
        "all": True,
    }
    lonely = render(Scene(RED_CIRCLE_ABOVE_BLUE_SQUARE.objects[:1], 0.25), 32)
    result = score(lonely, caption(RED_CIRCLE_ABOVE_BLUE_SQUARE))
    assert not result["count"] and not result["relation"] and not result["all"]


def test_score_batch():
    scenes = random_scenes(6, seed=3)
    images = torch.stack(
        [torch.from_numpy(render(s, 32)).permute(2, 0, 1).float() / 255 for s in scenes]
    )  # (B, 3, H, W)
    frame = score_batch(images, [caption(s) for s in scenes])
    assert isinstance(frame, pd.DataFrame) and len(frame) == 6 and frame["all"].all()
    assert {"colour", "shape", "size", "count", "all"} <= set(frame.columns)
    assert all(dtype == "boolean" for dtype in frame.dtypes)
    with pytest.raises(ValueError, match="captions"):
        score_batch(images, ["a red circle"])
