"""The Shapes oracle: read an image back into objects and score it against a caption.

It scores generated images, which are blurry, noisy and off-colour, so nothing is matched
exactly. Each pixel gets the palette hue nearest to its own and a coverage: its chroma over
a palette colour's, 0 on the neutral gray background, 1 inside an object, in between at an
anti-aliased or blurred edge. Connected regions of one hue, specks aside, are objects. Over
a region and its blurred rim, the coverage-weighted area gives the size, the centroid the
position, and two moments the shape: |sum w z^3| (three-fold symmetry: triangles) and
|sum w z^4| (four-fold: squares, crosses twice as much; circles have neither), with z the
pixel's offset from the centroid as a complex number. Both are invariant to rotation and,
for a symmetric blur, to blurring, which is why they are used rather than outlines.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.ndimage
import torch

from unclip_repro.data.shapes import (
    COLOURS,
    SHAPES,
    SIZES,
    Object,
    ObjectSpec,
    Scene,
    SceneSpec,
    object_area,
    parse_caption,
    position_of,
    render,
)

_HUES = np.radians(np.arange(0, 360, 60))  # COLOURS are ordered by hue
_DIRECTIONS = np.stack([np.cos(_HUES), np.sin(_HUES)], axis=-1)  # (6, 2) in the chroma plane
_FULL_CHROMA = float(np.ptp(np.asarray(list(COLOURS.values())) / 255, axis=1).min())
_SMOOTH = 0.6  # pixels: a Gaussian denoise, harmless as the features are blur-invariant
_MIN_COVERAGE = 0.25  # a pixel belongs to an object above this coverage
_HALO = 1 / 16  # image sides: how far around a region its blurred rim is collected
_FEATURE_SCALE = np.array([0.01, 0.004])  # feature differences that count as one unit
_MIN_AREA = 0.25 * min(object_area(s, z) for s in SHAPES for z in SIZES)  # smaller: a speck


@dataclass(frozen=True)
class Detected:
    """An object found in an image: centre (x, y) normalised, area a fraction of the image."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    area: float


def _as_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any of uint8 (H, W, 3), float (H, W, 3) or (3, H, W) in [0, 1] -> float (H, W, 3)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"expected an image (H, W, 3) or (3, H, W), got shape {image.shape}")
    if image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return np.clip(image.astype(np.float32), 0, 1)


def _chroma(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette index (H, W) and denoised chroma (H, W, 2); a palette colour has 1."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    chroma = np.stack([r - (g + b) / 2, np.sqrt(3) / 2 * (g - b)], axis=-1)  # red at 0 deg
    chroma = scipy.ndimage.gaussian_filter(chroma, (_SMOOTH, _SMOOTH, 0)) / _FULL_CHROMA
    hue = np.round(np.arctan2(chroma[..., 1], chroma[..., 0]) / (np.pi / 3))
    return hue.astype(np.int64) % len(COLOURS), chroma


def _moments(weights: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Three- and four-fold symmetry |sum w z^n| / area^(n/2+1) of a weighted region, (2,)."""
    area = weights.sum()
    z = (cols - (weights * cols).sum() / area) + 1j * (rows - (weights * rows).sum() / area)
    return np.array([np.abs((weights * z**n).sum()) / area ** (n / 2 + 1) for n in (3, 4)])


@functools.cache
def _references() -> dict[str, np.ndarray]:
    """The features of each ideal shape, measured on a large upright render."""
    refs = {}
    for shape in SHAPES:
        image = render(Scene([Object("red", shape, "large", 0.5, 0.5)], 0.3), 256)
        ((_, refs[shape], *_),) = _components(_as_hwc(image))
    return refs


def _classify(features: np.ndarray) -> str:
    """The ideal shape with the nearest features."""
    refs = _references()
    return min(refs, key=lambda s: float(np.sum(((features - refs[s]) / _FEATURE_SCALE) ** 2)))


def _components(image: np.ndarray) -> list[tuple[int, np.ndarray, float, float, float]]:
    """(palette index, shape features, area, x, y) of every object-like region of an image."""
    height, width = image.shape[:2]
    min_pixels = _MIN_AREA * height * width
    hue, chroma = _chroma(image)
    solid = np.hypot(chroma[..., 0], chroma[..., 1]) > _MIN_COVERAGE  # (H, W)
    pad = max(2, round(height * _HALO))
    found = []
    counts = np.bincount(hue[solid], minlength=len(COLOURS))
    for k in np.flatnonzero(counts >= min_pixels):  # hues with enough pixels
        labels, _ = scipy.ndimage.label(solid & (hue == k))
        along = np.maximum(chroma @ _DIRECTIONS[k], 0)  # (H, W) coverage by colour k
        for i, (rs, cs) in enumerate(scipy.ndimage.find_objects(labels), start=1):
            rs = slice(max(rs.start - pad, 0), rs.stop + pad)
            cs = slice(max(cs.start - pad, 0), cs.stop + pad)
            core, cover = labels[rs, cs] == i, along[rs, cs]
            if cover[core].sum() < min_pixels:
                continue  # a speck
            # the region plus its blurred rim, less other objects; faded colours count as full
            rim = scipy.ndimage.binary_dilation(core, iterations=pad) & (core | ~solid[rs, cs])
            weights = np.clip(cover[rim] / np.clip(cover[core].max(), 0.5, 1), 0, 1)
            rows, cols = np.nonzero(rim)
            rows, cols = rows + rs.start + 0.5, cols + cs.start + 0.5  # pixel centres
            mass = weights.sum()
            x, y = (weights * cols).sum() / mass / width, (weights * rows).sum() / mass / height
            area = float(mass / (height * width))
            found.append((int(k), _moments(weights, rows, cols), area, float(x), float(y)))
    return found


def detect(image: np.ndarray | torch.Tensor) -> list[Detected]:
    """The objects in an image, largest first."""
    detected = []
    names = list(COLOURS)
    for k, features, area, x, y in _components(_as_hwc(image)):
        shape = _classify(features)
        threshold = np.sqrt(object_area(shape, "small") * object_area(shape, "large"))
        size = "large" if area > threshold else "small"
        detected.append(Detected(names[k], shape, size, x, y, area))
    return sorted(detected, key=lambda d: -d.area)


def relation(a: Detected, b: Detected) -> str:
    """Where a stands relative to b, along the axis of their larger displacement."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _matches(spec: ObjectSpec, det: Detected | None) -> dict[str, bool]:
    """Which stated attributes of one caption object a detection has."""
    keys = [k for k in ("colour", "shape", "size") if getattr(spec, k) is not None]
    out = {k: det is not None and getattr(det, k) == getattr(spec, k) for k in keys}
    if spec.position is not None:
        out["position"] = det is not None and position_of(det.x) == spec.position
    return out


def score(image: np.ndarray | torch.Tensor, caption: str | SceneSpec) -> dict[str, bool]:
    """Per-attribute correctness of an image for a caption, plus "count" and "all"."""
    spec = parse_caption(caption) if isinstance(caption, str) else caption
    found: list[Detected | None] = list(detect(image))
    n = len(spec.objects)
    candidates = found + [None] * (n - len(found)) if len(found) < n else found
    best: dict[str, bool] = {}
    best_hits = -1
    for chosen in itertools.permutations(candidates, n):  # match caption objects to detections
        per_object = [_matches(o, d) for o, d in zip(spec.objects, chosen, strict=True)]
        keys = dict.fromkeys(k for m in per_object for k in m)  # attributes some object states
        result = {k: all(m.get(k, True) for m in per_object) for k in keys}
        if spec.relation is not None:
            a, b = chosen
            result["relation"] = a is not None and b is not None and relation(a, b) == spec.relation
        hits = sum(sum(m.values()) for m in per_object) + result.get("relation", 0)
        if hits > best_hits:  # ties keep the first: detections are sorted by area
            best, best_hits = result, hits
    best["count"] = len(found) == n
    best["all"] = all(best.values())
    return best


def score_batch(
    images: torch.Tensor | np.ndarray | Sequence[np.ndarray], captions: Sequence[str]
) -> pd.DataFrame:
    """Score images (B, 3, H, W) or a list of images: one row each, nullable bool columns."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    rows = [score(image, text) for image, text in zip(images, captions, strict=True)]
    columns = ["colour", "shape", "size", "position", "relation", "count", "all"]
    frame = pd.DataFrame(rows).reindex(columns=[c for c in columns if any(c in r for r in rows)])
    return frame.astype("boolean")
