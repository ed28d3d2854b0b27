"""What a CLIP trained on the Shapes world gets right: retrieval and per-attribute zero-shot
accuracy on held-out colour–shape combinations, and a retrieval figure (notebook 02 and the
demo report them).
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from eval.metrics import save_figure, scene_set
from unclip_repro.clip import Clip
from unclip_repro.data import shapes

_THIRDS = {"left": 1 / 6, "middle": 1 / 2, "right": 5 / 6}


def _variants(scene: shapes.Scene, attribute: str) -> tuple[list[str], int]:
    """Captions of `scene` with one attribute of its single object changed; index of the truth."""
    obj = scene.objects[0]
    if attribute == "position":
        values, truth = list(_THIRDS), shapes.position_of(obj.x)
        objects = [replace(obj, x=_THIRDS[v]) for v in values]
    else:
        values = list(
            {"colour": shapes.COLOURS, "shape": shapes.SHAPES, "size": shapes.SIZES}[attribute]
        )
        truth = getattr(obj, attribute)
        objects = [replace(obj, **{attribute: v}) for v in values]
    return [shapes.caption(replace(scene, objects=[o])) for o in objects], values.index(truth)


def _swapped(scene: shapes.Scene, what: str) -> str:
    """The caption of a two-object scene with colours swapped, or with the relation reversed."""
    a, b = scene.objects
    if what == "binding":
        return shapes.caption(
            replace(scene, objects=[replace(a, colour=b.colour), replace(b, colour=a.colour)])
        )
    return shapes.caption(replace(scene, relation=shapes.INVERSE_RELATION[scene.relation]))


@torch.no_grad()
def shapes_report(
    clip: Clip, resolution: int, n: int = 1000, split: str = "heldout", seed: int = 0
) -> dict[str, float]:
    """Retrieval and per-attribute zero-shot accuracy of CLIP on `n` Shapes scenes of `split`.

    - retrieval_top1: text -> image among the n images, the exact image;
    - retrieval_top1_match: the retrieved image has the caption's content (equal canonical
      captions);
    - colour/shape/size/position: single-object scenes, the true caption beats every caption
      with that attribute changed (chance 1/6, 1/4, 1/2, 1/3);
    - binding: two-object scenes, the true caption beats the one with colours swapped (chance 1/2);
    - relation: the true caption beats the reversed relation (chance 1/2).
    """
    scenes, _ = scene_set("clip", n, seed, split=split)
    images = shapes.render_batch(scenes, resolution)
    captions = [shapes.caption(s) for s in scenes]
    z_i = torch.cat([clip.encode_image(chunk) for chunk in images.split(256)])  # (n, D)
    z_t = torch.cat([clip.encode_text(c).z_t for c in _chunks(captions, 256)])  # (n, D)
    best = (z_t @ z_i.T).argmax(dim=1)  # (n,)
    report = {
        "n": n,
        "split": split,
        "retrieval_top1": (best == torch.arange(n)).float().mean().item(),
        "retrieval_top1_match": float(
            np.mean([captions[j] == c for j, c in zip(best.tolist(), captions, strict=True)])
        ),
    }
    singles = [i for i, s in enumerate(scenes) if len(s.objects) == 1]
    pairs = [i for i, s in enumerate(scenes) if len(s.objects) == 2]
    for attribute in ("colour", "shape", "size", "position"):
        hits = []
        for i in singles:
            texts, truth = _variants(scenes[i], attribute)
            hits.append(int((clip.encode_text(texts).z_t @ z_i[i]).argmax()) == truth)
        report[attribute] = float(np.mean(hits))
    for what in ("binding", "relation"):
        wrong = clip.encode_text([_swapped(scenes[i], what) for i in pairs]).z_t
        right = z_t[pairs]
        report[what] = ((right - wrong) * z_i[pairs]).sum(-1).gt(0).float().mean().item()
    return report


@torch.no_grad()
@torch.no_grad()
def _embed(clip: Clip, scenes: list[shapes.Scene], resolution: int) -> np.ndarray:
    """z_i (N, D) of the scenes' renders, 256 at a time."""
    images = shapes.render_batch(scenes, resolution)
    return torch.cat([clip.encode_image(c) for c in images.split(256)]).float().numpy()


def linear_probe(
    clip: Clip, resolution: int, n_fit: int = 2500, n_test: int = 500, seed: int = 0
) -> dict[str, float]:
    """How linearly z_i holds each attribute: a logistic regression on standardised z_i of
    `n_fit` single-object training-pair scenes, scored on `n_test` fresh ones (colour, shape,
    size, position; chance 1/6, 1/4, 1/2, 1/3), and its shape read on scenes of the held-out
    colour–shape pairs (`heldout_shape`: a CLIP that binds shape to colour answers the shape
    it saw with that colour). A decoder reads z_i through linear maps, so this is the CLIP's
    acceptance check before anything is trained on it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit, _ = scene_set("probe", n_fit, seed, n_objects=1)
    test, _ = scene_set("probe-test", n_test, seed, n_objects=1)
    heldout, _ = scene_set("probe-test", n_test, seed, n_objects=1, split="heldout")
    x_fit, x_test, x_held = (_embed(clip, scenes, resolution) for scenes in (fit, test, heldout))
    label = {
        "colour": lambda s: s.objects[0].colour,
        "shape": lambda s: s.objects[0].shape,
        "size": lambda s: s.objects[0].size,
        "position": lambda s: shapes.position_of(s.objects[0].x),
    }
    report: dict[str, float] = {"n_fit": n_fit, "n_test": n_test}
    for attribute, of in label.items():
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(x_fit, [of(s) for s in fit])
        report[attribute] = float(probe.score(x_test, [of(s) for s in test]))
        if attribute == "shape":
            report["heldout_shape"] = float(probe.score(x_held, [of(s) for s in heldout]))
    return report


def binding_probe(
    clip: Clip, resolution: int, n_fit: int = 4000, n_test: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Whether z_i holds which object is which (§7): on two-object training-pair scenes whose
    objects stand side by side, a logistic regression on z_i reads the left object's colour
    and shape, scored where the two objects differ in it, so that an embedding of the bag of
    attributes alone scores 50% and one that binds each to its place 100%. `has_circle`: the
    bag itself, whether a circle is in the scene (its base rate beside it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def side_by_side(purpose: str, n: int) -> tuple[list[shapes.Scene], np.ndarray]:
        scenes, _ = scene_set(purpose, n, seed, n_objects=2)
        scenes = [
            s
            for s in scenes
            if abs(s.objects[0].x - s.objects[1].x) > abs(s.objects[0].y - s.objects[1].y)
        ]
        return scenes, _embed(clip, scenes, resolution)

    fit, x_fit = side_by_side("probe", n_fit)
    test, x_test = side_by_side("probe-test", n_test)

    def left(s: shapes.Scene) -> shapes.Object:
        return min(s.objects, key=lambda o: o.x)

    report: dict[str, float] = {}
    for attribute in ("colour", "shape"):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        probe.fit(x_fit, [getattr(left(s), attribute) for s in fit])
        differ = [
            i for i, s in enumerate(test) if len({getattr(o, attribute) for o in s.objects}) == 2
        ]
        truth = [getattr(left(test[i]), attribute) for i in differ]
        report[f"left_{attribute}"] = float(probe.score(x_test[differ], truth))
        report[f"left_{attribute}_n"] = len(differ)
    has = [any(o.shape == "circle" for o in s.objects) for s in fit + test]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    probe.fit(x_fit, has[: len(fit)])
    report["has_circle"] = float(probe.score(x_test, has[len(fit) :]))
    share = float(np.mean(has[len(fit) :]))
    report["has_circle_base_rate"] = max(share, 1 - share)
    return report


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def plot_report(clip: Clip, resolution: int, path: str | Path, n: int = 200, seed: int = 0) -> None:
    """A figure: 6 held-out captions, each with the 5 images CLIP ranks highest among `n`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes, _ = scene_set("clip-figure", n, seed, split="heldout")
    images = shapes.render_batch(scenes, resolution)
    captions = [shapes.caption(s) for s in scenes]
    sim = clip.encode_text(captions[:6]).z_t @ clip.encode_image(images).T  # (6, n)
    fig, axes = plt.subplots(6, 5, figsize=(7, 10))
    for row, order in enumerate(sim.argsort(dim=1, descending=True)[:, :5]):
        axes[row, 0].set_ylabel(
            textwrap.fill(captions[row], 22), rotation=0, ha="right", va="center", fontsize=9
        )
        for col, j in enumerate(order.tolist()):
            ax = axes[row, col]
            ax.imshow(images[j].permute(1, 2, 0).numpy())
            good = captions[j] == captions[row]
            ax.set_title(f"{sim[row, j]:.3f}", fontsize=8, color="green" if good else "red")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"held-out captions, CLIP's top 5 of {n} images\n"
        "(z_t·z_i; green: the image has the caption's content)",
        fontsize=10,
    )
    save_figure(fig, path, dpi=100)
