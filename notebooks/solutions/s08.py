"""Solutions to notebook 08's exercises (evaluation)."""

from __future__ import annotations

import numpy as np

from eval import attribute_binding, features, metrics
from unclip_repro.data import shapes


def real_fid_by_n(ns: list[int], seed: int = 0, resolution: int = 32) -> dict[int, float]:
    """Exercise 1: FID between two independent sets of real renders of the same n captions."""
    extract = features.shapes_features()
    out = {}
    for n in ns:
        scenes, rng = metrics.scene_set("fid", n, seed)
        a = extract(shapes.render_batch([shapes.redraw(s, rng) for s in scenes], resolution))
        b = extract(shapes.render_batch([shapes.redraw(s, rng) for s in scenes], resolution))
        out[n] = metrics.fid(metrics.Stats.of(a), metrics.Stats.of(b))
    return out


def diversity_same_vs_random(
    n_captions: int = 8, samples: int = 4, seed: int = 0
) -> tuple[float, float]:
    """Exercise 2: diversity of renders of the same caption, and of renders of random captions."""
    extract = features.shapes_features()
    rng = np.random.default_rng(seed)
    scenes = [shapes.random_scene(rng) for _ in range(n_captions)]
    same = [shapes.redraw(s, rng) for s in scenes for _ in range(samples)]
    other = [shapes.random_scene(rng) for _ in range(n_captions * samples)]
    a, b = (
        extract(shapes.render_batch(x, 32)).view(n_captions, samples, -1) for x in (same, other)
    )
    return metrics.diversity(a), metrics.diversity(b)


def sizes_swapped() -> dict[str, str | None]:
    """Exercise 3: a small red square above a large blue circle, judged against the caption
    "a large red square above a small blue circle"."""
    said = shapes.Scene(
        [
            shapes.Object("red", "square", "large", 0.5, 0.25),
            shapes.Object("blue", "circle", "small", 0.5, 0.75),
        ],
        0.3,
        "above",
    )
    drawn = shapes.Scene(
        [
            shapes.Object("red", "square", "small", 0.5, 0.25),
            shapes.Object("blue", "circle", "large", 0.5, 0.75),
        ],
        0.3,
        "above",
    )
    image = shapes.to_tensor(shapes.render(drawn, 64))
    return attribute_binding.classify(image, shapes.scene_spec(said))


def check() -> None:
    """Each solution does what its exercise asks."""
    fids = real_fid_by_n([20, 320])
    assert fids[20] > fids[320] > 0, fids
    same, random = diversity_same_vs_random()
    assert random > 1.2 * same, (same, random)
    outcome = sizes_swapped()
    assert outcome["outcome"] == "swapped" and outcome["size"] == "swapped", outcome
    assert outcome["shape"] == "right" and outcome["place"] == "right", outcome
