"""The Shapes world: sampling, splits, rendering and the caption grammar."""

import time

import numpy as np
import pytest
import torch

from unclip_repro.data import oracle, shapes
from unclip_repro.data.shapes import (
    COLOURS,
    HELDOUT_COMBOS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    Object,
    ObjectSpec,
    Scene,
    SceneSpec,
    ShapesDataset,
    caption,
    object_area,
    object_extent,
    parse_caption,
    position_of,
    random_scene,
    render,
    sample_batch,
    scene_spec,
    unknown_words,
)


def scenes(n: int, seed: int = 0, **kwargs) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **kwargs) for _ in range(n)]


def test_palette_and_heldout_combos_leave_every_attribute_in_training():
    assert len(COLOURS) == 6 and len(SHAPES) == 4 and set(SIZES) == {"small", "large"}
    assert len(POSITIONS) == 3 and len(RELATIONS) == 4
    train = {(c, s) for c in COLOURS for s in SHAPES} - HELDOUT_COMBOS
    assert {c for c, _ in train} == set(COLOURS) and {s for _, s in train} == set(SHAPES)
    assert {c for c, _ in HELDOUT_COMBOS} <= set(COLOURS)


def test_random_scene_is_deterministic_and_mixes_object_counts():
    a, b = scenes(50, seed=7), scenes(50, seed=7)
    assert a == b and a != scenes(50, seed=8)
    counts = [len(s.objects) for s in scenes(200)]
    assert 60 < counts.count(1) < 140 and set(counts) == {1, 2}
    assert all(len(s.objects) == 2 for s in scenes(20, n_objects=2))


@pytest.mark.parametrize("split", ["train", "heldout", "any"])
def test_splits(split):
    combos = [{(o.colour, o.shape) for o in s.objects} for s in scenes(400, split=split)]
    heldout = [bool(c & HELDOUT_COMBOS) for c in combos]
    if split == "train":
        assert not any(heldout)
    elif split == "heldout":
        assert all(heldout)
    else:
        assert 0 < sum(heldout) < len(heldout)


def test_scene_geometry_makes_captions_unambiguous():
    for scene in scenes(400, split="any"):
        ext = [object_extent(o.shape, o.size) for o in scene.objects]
        for o, e in zip(scene.objects, ext, strict=True):
            assert e <= o.x <= 1 - e and e <= o.y <= 1 - e and abs(o.rotation) <= 15
        if len(scene.objects) == 1:
            assert scene.relation is None
            assert min(abs(scene.objects[0].x * 3 - k) for k in (1, 2)) >= 0.15  # off boundaries
            continue
        a, b = scene.objects
        assert (a.colour, a.shape) != (b.colour, b.shape)
        along, across = (a.x - b.x, a.y - b.y)
        if scene.relation in ("above", "below"):
            along, across = across, along
        assert abs(along) >= ext[0] + ext[1] + 0.05 and abs(across) <= abs(along) / 2
        assert (along < 0) == (scene.relation in ("left of", "above"))


def test_canonical_captions():
    one = Scene([Object("red", "circle", "large", 0.2, 0.5)], 0.3)
    assert caption(one) == "a large red circle on the left"
    objects = [
        Object("red", "circle", "small", 0.5, 0.2),
        Object("blue", "square", "large", 0.5, 0.7),
    ]
    two = Scene(objects, 0.3, "above")
    assert caption(two) == "a small red circle above a large blue square"
    assert parse_caption(caption(two)) == SceneSpec(
        (ObjectSpec("red", "circle", "small"), ObjectSpec("blue", "square", "large")), "above"
    )


def test_parse_caption_round_trips_every_phrasing():
    rng = np.random.default_rng(1)
    for scene in scenes(300, split="any"):
        spec = scene_spec(scene)
        assert parse_caption(caption(scene)) == spec
        for _ in range(4):
            assert parse_caption(caption(scene, rng)) == spec
    scene = scenes(1, n_objects=2)[0]
    assert len({caption(scene, rng) for _ in range(100)}) > 20


def test_captions_that_leave_attributes_unstated_parse_and_score_right():
    rng = np.random.default_rng(2)
    for scene in scenes(200, split="any"):
        text = caption(scene, rng, unstated=0.5)
        spec, full = parse_caption(text), scene_spec(scene)
        for said, true in zip(spec.objects, full.objects, strict=True):
            for key in ("colour", "shape", "size", "position"):
                assert getattr(said, key) in (None, getattr(true, key)), text
        assert oracle.score(render(scene, 32), text)["all"], text
    said = [parse_caption(caption(s, rng, unstated=0.5)) for s in scenes(200)]
    assert any(o.shape is None for s in said for o in s.objects)  # "a shape", "a thing"
    assert parse_caption("a shape") == SceneSpec((ObjectSpec(None, None, None),))
    # nothing unstated: the same paraphrases, drawn from the same stream, as before
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [caption(s, a) for s in scenes(50)] == [caption(s, b, 0.0) for s in scenes(50)]


def test_parse_caption_canonicalises_synonyms_and_reversed_relations():
    assert parse_caption("there is a big purple disk at the left side.") == parse_caption(
        "a large magenta circle on the left"
    )
    above = parse_caption("a red circle above a blue square")
    assert parse_caption("a blue square is below a red circle") == above
    assert parse_caption("A red circle, on top of a blue square") == above
    assert above.relation == "above" and above.objects[0].colour == "red"
    right = parse_caption("a tiny green plus to the right of a big cyan triangle")
    assert right.relation == "left of" and right.objects[0].shape == "triangle"
    assert parse_caption("a red circle") == SceneSpec((ObjectSpec("red", "circle", None),))


@pytest.mark.parametrize(
    "text, message",
    [
        ("a fluffy zebra near the circle", "fluffy, zebra, near"),
        ("", "needs a shape"),
        ("a large red", "needs a shape"),
        ("a red circle a blue square a green cross", "at most two"),
        ("a red circle above", "relation needs two objects"),
        ("a red circle on the left in the middle", "conflicting positions"),
        ("a red circle a blue square", "one relation"),
        ("a red circle above a blue square on the left", "one relation"),
        ("a red blue circle", "two colours"),
    ],
)
def test_parse_caption_rejects_text_outside_the_grammar(text, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_unknown_words():
    assert unknown_words("A fluffy red circle, near the zebra!") == ["fluffy", "near", "zebra"]
    assert unknown_words(caption(scenes(1)[0], np.random.default_rng(0))) == []


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_render_is_anti_aliased_and_scales(resolution):
    obj = Object("green", "square", "large", 0.43, 0.57, rotation=10.0)
    image = render(Scene([obj], background=0.3), resolution)
    assert image.dtype == np.uint8 and image.shape == (resolution, resolution, 3)
    background, colour = np.full(3, round(0.3 * 255)), np.array(COLOURS["green"])
    pure = (image == background).all(-1) | (image == colour).all(-1)
    assert (image[0, 0] == background).all() and (
        image[resolution // 2, resolution // 2] == colour
    ).all()
    assert 0 < (~pure).sum() < 6 * resolution  # an anti-aliased rim, one pixel wide
    coverage = (image[..., 1].astype(float) - background[1]) / (colour[1] - background[1])
    assert coverage.mean() == pytest.approx(object_area("square", "large"), rel=0.02)


def test_render_speed():
    scene = scenes(1, n_objects=2)[0]
    for resolution in (32, 64, 128):
        start = time.perf_counter()
        for _ in range(100):
            render(scene, resolution)
        ms = (time.perf_counter() - start) * 10
        print(f"render at {resolution}px: {ms:.3f} ms per image")


def test_shapes_dataset_is_deterministic():
    data = ShapesDataset(8, 32, seed=3, split="heldout")
    item = data[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    again = ShapesDataset(8, 32, seed=3, split="heldout")[5]
    assert torch.equal(item["image"], again["image"]) and item["caption"] == again["caption"]
    assert parse_caption(item["caption"]) == parse_caption(item["canonical"])
    assert not torch.equal(item["image"], ShapesDataset(8, 32, seed=4)[5]["image"])
    assert len(data) == 8
    with pytest.raises(IndexError):
        data[8]


def test_sample_batch():
    images, captions = sample_batch(np.random.default_rng(0), 16, 32, n_objects=1)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and len(captions) == 16
    assert all(len(parse_caption(c).objects) == 1 for c in captions)
    assert (
        position_of(0.1) == "left" and position_of(0.5) == "middle" and position_of(1.0) == "right"
    )


def test_twin_changes_one_stated_attribute_and_stays_in_split():
    from unclip_repro.data import oracle

    rng = np.random.default_rng(7)
    kinds = set()
    for _ in range(300):
        scene = shapes.random_scene(rng, split="train")
        other = shapes.twin(scene, rng, split="train")
        assert shapes.caption(other) != shapes.caption(scene)
        assert all((o.colour, o.shape) not in shapes.HELDOUT_COMBOS for o in other.objects)
        assert oracle.score(shapes.render(other, 32), shapes.caption(other))["all"]
        a, b = shapes.scene_spec(scene), shapes.scene_spec(other)
        if len(scene.objects) == 1:
            (x,), (y,) = a.objects, b.objects
            kinds.add("position" if x.position != y.position else "colour")
            assert (x.shape, x.size) == (y.shape, y.size)
        else:
            kinds.add("relation" if other.relation != scene.relation else "binding")
    assert kinds == {"position", "colour", "relation", "binding"}


def test_sample_batch_with_twins_pairs_each_scene_with_a_hard_negative():
    images, captions = shapes.sample_batch(np.random.default_rng(0), 8, 32, twins=True)
    assert images.shape == (8, 3, 32, 32) and len(captions) == 8
    for first, second in zip(captions[:4], captions[4:], strict=True):
        assert shapes.parse_caption(first) != shapes.parse_caption(second)


def test_entails_reads_unstated_attributes_as_true_of_any_value():
    truth = shapes.scene_spec(
        shapes.Scene([shapes.Object("red", "circle", "small", 0.1, 0.5)], 0.3)
    )
    assert shapes.entails(truth, shapes.parse_caption("a small red circle on the left"))
    assert shapes.entails(truth, shapes.parse_caption("a red shape"))
    assert shapes.entails(truth, shapes.parse_caption("a thing on the left"))
    assert not shapes.entails(truth, shapes.parse_caption("a red square"))
    assert not shapes.entails(truth, shapes.parse_caption("a red circle on the right"))
    assert not shapes.entails(truth, shapes.parse_caption("a red circle above a blue square"))
    pair = shapes.parse_caption("a large red circle left of a small blue square")
    assert shapes.entails(pair, shapes.parse_caption("a blue square right of a red shape"))
    assert not shapes.entails(pair, shapes.parse_caption("a red shape right of a blue square"))
    assert not shapes.entails(pair, shapes.parse_caption("a blue shape left of a red circle"))


def test_realise_keeps_what_a_caption_states_and_draws_the_rest():
    from unclip_repro.data import oracle

    rng = np.random.default_rng(3)
    said = shapes.parse_caption("a red shape")
    scenes = [shapes.realise(said, rng) for _ in range(200)]
    assert all(shapes.entails(shapes.scene_spec(s), said) for s in scenes)
    assert {s.objects[0].shape for s in scenes} == set(shapes.SHAPES) - {"triangle"}  # held out
    assert {shapes.position_of(s.objects[0].x) for s in scenes} == set(shapes.POSITIONS)
    pair = shapes.parse_caption("a blue square below a thing")
    for scene in (shapes.realise(pair, rng) for _ in range(50)):
        assert shapes.entails(shapes.scene_spec(scene), pair)
        assert oracle.score(shapes.render(scene, 64), "a blue square below a thing")["all"]
    # a fully stated caption: the same objects, new residual detail (= redraw)
    scene = shapes.random_scene(np.random.default_rng(0), n_objects=2)
    again = shapes.realise(shapes.scene_spec(scene), np.random.default_rng(1))
    assert shapes.scene_spec(again) == shapes.scene_spec(scene)


def test_two_object_share_is_drawn_as_asked_and_the_default_draw_is_kept():
    """`two_objects` sets the share of two-object scenes; 0.5 is the 50/50 draw every shipped
    component trained on, scene for scene."""

    def twos(p: float) -> int:
        scenes = shapes.sample_scenes(np.random.default_rng(1), 2000, two_objects=p)
        return sum(len(scene.objects) == 2 for scene in scenes)

    assert twos(0.0) == 0 and twos(1.0) == 2000 and abs(twos(0.8) / 2000 - 0.8) < 0.03
    counts = np.random.default_rng(2).integers(1, 3, size=1)  # the draw before the setting
    assert len(shapes.random_scene(np.random.default_rng(2)).objects) == counts[0]
