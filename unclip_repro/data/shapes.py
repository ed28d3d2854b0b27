"""The Shapes world: captioned scenes of 1-2 coloured shapes, a renderer and a caption grammar.

A scene holds one or two objects. Each object has a colour (6 saturated hues 60 degrees apart),
a shape (circle, square, triangle, cross) and a size (small, large); a single object also has
a horizontal position (left / middle / right third), and two objects stand in a relation
("left of", "right of", "above", "below": objects[0] relative to objects[1]). What a caption
does not say -- the exact centre, a rotation of up to 15 degrees, the gray background shade --
varies freely: it is the "residual detail" that unCLIP's variations should change.
Coordinates are normalised: x, y in [0, 1], y pointing down, sizes in units of the image side,
so one scene renders at any resolution. Some colour-shape pairs (`HELDOUT_COMBOS`) never occur
in the "train" split and measure compositional generalisation.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

import numpy as np
import torch

COLOURS: dict[str, tuple[int, int, int]] = {  # ordered by hue: 0, 60, ..., 300 degrees
    "red": (230, 25, 25),
    "yellow": (230, 230, 25),
    "green": (25, 230, 25),
    "cyan": (25, 230, 230),
    "blue": (25, 25, 230),
    "magenta": (230, 25, 230),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: dict[str, float] = {"small": 0.13, "large": 0.2}  # name -> scale s (image sides)
POSITIONS: tuple[str, ...] = ("left", "middle", "right")  # thirds of the image width
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")}
)
SPLITS: tuple[str, ...] = ("train", "heldout", "any")

# Geometry in units of the scale s: circle radius, square half-side, triangle circumradius,
# cross half-length and half arm width. _EXTENT is the radius of the bounding disc.
_CIRCLE_R, _SQUARE_H, _TRIANGLE_R, _CROSS_L, _CROSS_W = 0.85, 0.72, 1.1, 1.0, 0.33
_EXTENT = {
    "circle": _CIRCLE_R,
    "square": _SQUARE_H * np.sqrt(2),
    "triangle": _TRIANGLE_R,
    "cross": float(np.hypot(_CROSS_L, _CROSS_W)),
}
_AREA = {  # area at s = 1
    "circle": np.pi * _CIRCLE_R**2,
    "square": 4 * _SQUARE_H**2,
    "triangle": 3 * np.sqrt(3) / 4 * _TRIANGLE_R**2,
    "cross": 8 * _CROSS_L * _CROSS_W - 4 * _CROSS_W**2,
}
_MAX_ROTATION = 15.0  # degrees, polygons only
_POSITION_MARGIN = 0.05  # an object's centre keeps this far from the third boundaries
_GAP = 0.08  # minimal gap between the bounding discs of two related objects
_BACKGROUND = (0.1, 0.45)  # range of the neutral gray background


@dataclass
class Object:
    """One shape in a scene: centre (x, y) in [0, 1] with y down, rotation in degrees."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    rotation: float = 0.0


@dataclass
class Scene:
    """Objects on a gray background; `relation` tells objects[0] relative to objects[1]."""

    objects: list[Object]
    background: float
    relation: str | None = None


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; None where it says nothing."""

    colour: str | None
    shape: str | None  # None: "a shape", "a thing"
    size: str | None
    position: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says about a scene; two-object specs use only "left of" and "above"."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


def object_area(shape: str, size: str) -> float:
    """Area of an object as a fraction of the image area."""
    return float(_AREA[shape] * SIZES[size] ** 2)


def object_extent(shape: str, size: str) -> float:
    """Radius of the disc that holds an object at any rotation, in image sides."""
    return float(_EXTENT[shape] * SIZES[size])


def position_of(x: float) -> str:
    """The third of the image width a normalised x falls into."""
    return POSITIONS[min(int(x * 3), 2)]


# ----------------------------------------------------------------------------- sampling


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _combos(split: str, heldout: bool) -> list[tuple[str, str]]:
    """The (colour, shape) pairs allowed for one object."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if heldout:
        return sorted(HELDOUT_COMBOS)
    return pairs if split == "any" else [p for p in pairs if p not in HELDOUT_COMBOS]


def _rotation(rng: np.random.Generator, shape: str) -> float:
    return 0.0 if shape == "circle" else float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))


def random_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    split: str = "train",
    two_objects: float = 0.5,
) -> Scene:
    """Draw a scene of 1 or 2 objects from a split (n_objects None: two with probability
    `two_objects`)."""
    _check_split(split)
    if n_objects is not None:
        n = n_objects
    elif two_objects == 0.5:  # the draw every shipped component trained on
        n = int(rng.integers(1, 3))
    else:
        n = 1 + int(rng.random() < two_objects)
    if n not in (1, 2):
        raise ValueError(f"n_objects must be 1, 2 or None, got {n_objects}")
    special = int(rng.integers(n)) if split == "heldout" else -1  # the held-out object
    attrs: list[tuple[str, str, str]] = []
    while len(attrs) < n:
        combos = _combos("any" if split == "heldout" else split, heldout=len(attrs) == special)
        colour, shape = combos[rng.integers(len(combos))]
        if attrs and (colour, shape) == attrs[0][:2]:
            continue  # two objects differ in colour or shape, so a caption is unambiguous
        attrs.append((colour, shape, list(SIZES)[rng.integers(len(SIZES))]))
    return _place(rng, attrs)


def redraw(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same caption with new residual detail: objects, sizes, the single object's third and
    the relation kept; exact centres, rotations and background drawn afresh."""
    return realise(scene_spec(scene), rng)


def _choose(rng: np.random.Generator, options: list) -> object:
    """One of `options` at random; no draw when there is only one (so a fully stated spec
    consumes the generator exactly as laying out its objects does)."""
    return options[0] if len(options) == 1 else options[rng.integers(len(options))]


def realise(spec: SceneSpec, rng: np.random.Generator, split: str = "train") -> Scene:
    """A random scene that `spec` is true of: what it states kept, each attribute it leaves
    unstated drawn afresh (colour–shape pairs from `split`, or from any pair when the stated
    one is held out), with new residual detail. For a caption that says "a red shape", these
    are the images it stands for (§5.2)."""
    _check_split(split)
    for _ in range(100):
        attrs = []
        for o in spec.objects:
            fits = [(c, s) for c, s in _combos("any", False) if o.colour in (None, c)]
            fits = [(c, s) for c, s in fits if o.shape in (None, s)]
            pairs = [p for p in _combos(split, heldout=split == "heldout") if p in fits]
            colour, shape = _choose(rng, pairs or fits)
            attrs.append((colour, shape, o.size or _choose(rng, list(SIZES))))
        if len(attrs) == 1 or attrs[0][:2] != attrs[1][:2]:  # as random_scene: distinct objects
            break
    else:
        raise ValueError(f"no scene of split {split!r} fits {spec}")
    position = spec.objects[0].position
    third = POSITIONS.index(position) if position is not None else None
    return _place(rng, attrs, third, spec.relation)


def _place(
    rng: np.random.Generator,
    attrs: list[tuple[str, str, str]],
    third: int | None = None,
    relation: str | None = None,
) -> Scene:
    """Lay out objects (colour, shape, size) in a given or random third / relation."""
    n = len(attrs)
    extents = [object_extent(shape, size) for _, shape, size in attrs]
    background = float(rng.uniform(*_BACKGROUND))
    if n == 1:
        (e,) = extents
        k = int(rng.integers(3)) if third is None else third
        lo, hi = max(k / 3 + _POSITION_MARGIN, e), min((k + 1) / 3 - _POSITION_MARGIN, 1 - e)
        xy = [(rng.uniform(lo, hi), rng.uniform(e, 1 - e))]
        relation = None
    else:
        relation = RELATIONS[rng.integers(len(RELATIONS))] if relation is None else relation
        first, second = (0, 1) if relation in ("left of", "above") else (1, 0)
        e0, e1 = extents[first], extents[second]
        a0 = rng.uniform(e0, 1 - e1 - (e0 + e1 + _GAP))  # along the relation's axis
        a1 = rng.uniform(a0 + e0 + e1 + _GAP, 1 - e1)
        b0 = rng.uniform(e0, 1 - e0)  # across it, within half the distance along it
        b1 = rng.uniform(max(e1, b0 - (a1 - a0) / 2), min(1 - e1, b0 + (a1 - a0) / 2))
        pair = [(a0, b0), (a1, b1)] if first == 0 else [(a1, b1), (a0, b0)]
        horizontal = relation in ("left of", "right of")
        xy = [(a, b) if horizontal else (b, a) for a, b in pair]
    objects = [
        Object(c, s, z, float(x), float(y), _rotation(rng, s))
        for (c, s, z), (x, y) in zip(attrs, xy, strict=True)
    ]
    return Scene(objects, background, relation)


def twin(scene: Scene, rng: np.random.Generator, split: str = "train") -> Scene:
    """A hard negative: the same scene with one stated attribute changed, still in `split`.

    One object: mirrored to the other side (left <-> right) or recoloured. Two objects:
    mirrored along the relation's axis (the relation reverses, the objects stay) or with
    their colours swapped (the binding changes). In a batch beside its original, a twin
    makes the contrastive loss pay for ignoring position, relation and binding, which random
    batches almost never do (cf. NegCLIP, Yuksekgonul et al. 2023, §4).
    """
    allowed = set(_combos(split, heldout=False)) if split != "heldout" else None
    ok = lambda objects: allowed is None or all((o.colour, o.shape) in allowed for o in objects)
    objects = scene.objects
    if len(objects) == 1:
        (obj,) = objects
        if position_of(obj.x) != "middle" and rng.random() < 0.5:
            return replace(scene, objects=[replace(obj, x=1 - obj.x, rotation=-obj.rotation)])
        others = [c for c in COLOURS if c != obj.colour and ok([replace(obj, colour=c)])]
        return replace(scene, objects=[replace(obj, colour=others[rng.integers(len(others))])])
    a, b = objects
    swapped = [replace(a, colour=b.colour), replace(b, colour=a.colour)]
    if a.colour != b.colour and ok(swapped) and rng.random() < 0.5:
        return replace(scene, objects=swapped)
    if scene.relation in ("left of", "right of"):
        mirrored = [replace(o, x=1 - o.x, rotation=-o.rotation) for o in objects]
    else:
        mirrored = [replace(o, y=1 - o.y) for o in objects]
    return replace(scene, objects=mirrored, relation=INVERSE_RELATION[scene.relation])


# ----------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=8)
def _pixel_centres(resolution: int) -> np.ndarray:
    """Normalised pixel-centre coordinates, shape (R,)."""
    return (np.arange(resolution, dtype=np.float32) + 0.5) / resolution


def _box_sdf(u: np.ndarray, v: np.ndarray, hu: float, hv: float) -> np.ndarray:
    """Signed distance to an axis-aligned box with half-sides (hu, hv)."""
    qu, qv = np.abs(u) - hu, np.abs(v) - hv
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0)


def _triangle_sdf(u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance to an upright equilateral triangle (Inigo Quilez's formula)."""
    k, r = np.sqrt(3), radius * np.sqrt(3) / 2  # r: half the side
    px, py = np.abs(u) - r, -v + r / k  # y up, apex at +radius
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


def _sdf(obj: Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (normalised units) to an object, (u, v) in its own rotated frame."""
    s = SIZES[obj.size]
    if obj.shape == "circle":
        return np.hypot(u, v) - _CIRCLE_R * s
    if obj.shape == "square":
        return _box_sdf(u, v, _SQUARE_H * s, _SQUARE_H * s)
    if obj.shape == "triangle":
        return _triangle_sdf(u, v, _TRIANGLE_R * s)
    if obj.shape == "cross":
        a, b = _CROSS_L * s, _CROSS_W * s
        return np.minimum(_box_sdf(u, v, a, b), _box_sdf(u, v, b, a))
    raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render(scene: Scene, resolution: int) -> np.ndarray:
    """Rasterise a scene, anti-aliased by analytic coverage: uint8 array (R, R, 3)."""
    image = np.empty((resolution, resolution, 3), np.float32)
    image[:] = scene.background * 255
    centres = _pixel_centres(resolution)
    for obj in scene.objects:
        e = object_extent(obj.shape, obj.size) + 1 / resolution
        c0, c1 = max(int((obj.x - e) * resolution), 0), int(np.ceil((obj.x + e) * resolution))
        r0, r1 = max(int((obj.y - e) * resolution), 0), int(np.ceil((obj.y + e) * resolution))
        dx = centres[None, c0:c1] - obj.x  # (1, w)
        dy = centres[r0:r1, None] - obj.y  # (h, 1)
        cos, sin = np.cos(np.radians(obj.rotation)), np.sin(np.radians(obj.rotation))
        u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (h, w) in the object's frame
        coverage = np.clip(0.5 - _sdf(obj, u, v) * resolution, 0, 1)[..., None]  # (h, w, 1)
        crop = image[r0:r1, c0:c1]
        crop += coverage * (np.asarray(COLOURS[obj.colour], np.float32) - crop)
    return np.round(image).astype(np.uint8)


# ----------------------------------------------------------------------------- captions

_SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
_COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"magenta": ("magenta", "purple")}
_SHAPE_WORDS = {"circle": ("circle", "disc", "disk"), "square": ("square",)}
_SHAPE_WORDS |= {"triangle": ("triangle",), "cross": ("cross", "plus")}
_ANY_SHAPE = ("shape", "thing")  # a caption that leaves the shape unstated (§5.2)
_POSITION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side"),
    "middle": ("in the middle", "in the center", "in the centre", "at the center"),
    "right": ("on the right", "at the right", "on the right side"),
}
_RELATION_PHRASES = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
INVERSE_RELATION = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
_FILLERS = ("a", "an", "the", "there", "is", "on", "at", "in", "to", "of", "side")
_VOCAB: dict[str, tuple[str, str | None]] = {  # word -> (kind, canonical value)
    w: (kind, name)
    for kind, table in (("size", _SIZE_WORDS), ("colour", _COLOUR_WORDS), ("shape", _SHAPE_WORDS))
    for name, words in table.items()
    for w in words
}
_VOCAB |= {w: ("filler", w) for w in _FILLERS}
_VOCAB |= {w: ("shape", None) for w in _ANY_SHAPE}
_VOCAB |= {"left": ("side", "left"), "right": ("side", "right")}  # a position or a relation
_VOCAB |= {w: ("position", "middle") for w in ("middle", "center", "centre")}
_VOCAB |= {w: ("relation", "above") for w in ("above", "over", "top")}
_VOCAB |= {w: ("relation", "below") for w in ("below", "under", "beneath", "underneath")}
VOCABULARY: tuple[str, ...] = tuple(_VOCAB)  # every word the caption grammar knows


def _pick(rng: np.random.Generator | None, options: tuple[str, ...]) -> str:
    return options[0] if rng is None else options[rng.integers(len(options))]


def _stated(rng: np.random.Generator | None, unstated: float) -> bool:
    """Whether a caption states the next attribute (no draw at all when none are left out)."""
    return rng is None or unstated <= 0 or rng.random() >= unstated


def _object_phrase(obj: Object, rng: np.random.Generator | None, unstated: float = 0.0) -> str:
    size = [_pick(rng, _SIZE_WORDS[obj.size])] if _stated(rng, unstated) else []
    colour = [_pick(rng, _COLOUR_WORDS[obj.colour])] if _stated(rng, unstated) else []
    shape = _SHAPE_WORDS[obj.shape] if _stated(rng, unstated) else _ANY_SHAPE
    return "a " + " ".join([*size, *colour, _pick(rng, shape)])


def caption(scene: Scene, rng: np.random.Generator | None = None, unstated: float = 0.0) -> str:
    """Describe a scene: the canonical phrasing if rng is None, else a random paraphrase that
    leaves each attribute (size, colour, shape, position) unstated with probability
    `unstated`, so that one caption stands for many images, as on the web (§5.2)."""
    form = 0 if rng is None else int(rng.integers(4))
    if len(scene.objects) == 1:
        obj = _object_phrase(scene.objects[0], rng, unstated)
        if not _stated(rng, unstated):
            return (obj, f"there is {obj}", obj, f"{obj}.")[form]
        where = _pick(rng, _POSITION_PHRASES[position_of(scene.objects[0].x)])
        templates = (f"{obj} {where}", f"{obj} is {where}", f"there is {obj} {where}")
        return (*templates, f"{where}, {obj}")[form]
    first, second, relation = *scene.objects, scene.relation
    if rng is not None and rng.random() < 0.5:  # the same content, read the other way round
        first, second, relation = second, first, INVERSE_RELATION[relation]
    a, b = _object_phrase(first, rng, unstated), _object_phrase(second, rng, unstated)
    rel = _pick(rng, _RELATION_PHRASES[relation])
    templates = (f"{a} {rel} {b}", f"{a} is {rel} {b}", f"there is {a} {rel} {b}")
    return (*templates, f"{a} {rel} {b}.")[form]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def unknown_words(text: str) -> list[str]:
    """The words of a text outside the caption grammar's vocabulary, in order."""
    return [w for w in _words(text) if w not in _VOCAB]


def _normalise(objects: list[ObjectSpec], relation: str | None) -> SceneSpec:
    """Write two-object specs with "left of" / "above" only, so paraphrases compare equal."""
    if relation in ("right of", "below"):
        objects, relation = objects[::-1], INVERSE_RELATION[relation]
    return SceneSpec(tuple(objects), relation)


def parse_caption(text: str) -> SceneSpec:
    """Read a caption of the grammar back into a spec; ValueError for anything else."""
    words = _words(text)
    if unknown := unknown_words(text):
        raise ValueError(f"cannot parse {text!r}: unknown word(s) {', '.join(unknown)}")
    objects: list[tuple[dict[str, str], int, int]] = []  # (attributes, first word, shape word)
    current: dict[str, str] = {}
    start = 0
    others: list[tuple[int, str, str]] = []  # (word index, kind, value)
    for i, word in enumerate(words):
        kind, value = _VOCAB[word]
        if kind in ("size", "colour", "shape"):
            if kind in current:
                raise ValueError(f"cannot parse {text!r}: two {kind}s for one object")
            start = i if not current else start
            current[kind] = value
            if kind == "shape":
                objects.append((current, start, i))
                current = {}
        elif kind != "filler":
            others.append((i, kind, value))
    if current or not objects:
        raise ValueError(f"cannot parse {text!r}: every object needs a shape, one of {SHAPES}")
    if len(objects) > 2:
        raise ValueError(f"cannot parse {text!r}: at most two objects")
    specs = [ObjectSpec(a.get("colour"), a["shape"], a.get("size")) for a, _, _ in objects]
    # a caption object is closed by its shape word, "shape" / "thing" when it is unstated
    if len(objects) == 1:
        if any(kind == "relation" for _, kind, _ in others):
            raise ValueError(f"cannot parse {text!r}: a relation needs two objects")
        positions = {value for _, _, value in others}
        if len(positions) > 1:
            raise ValueError(f"cannot parse {text!r}: conflicting positions {sorted(positions)}")
        position = positions.pop() if positions else None
        return SceneSpec((replace(specs[0], position=position),))
    if any(kind == "position" for _, kind, _ in others):
        raise ValueError(f"cannot parse {text!r}: a position needs a single object")
    relations = {value + " of" if kind == "side" else value for _, kind, value in others}
    if len(relations) != 1 or not all(objects[0][2] < i < objects[1][1] for i, _, _ in others):
        raise ValueError(f"cannot parse {text!r}: expected one relation between the two objects")
    return _normalise(specs, relations.pop())


def entails(truth: SceneSpec, said: SceneSpec) -> bool:
    """Whether a caption saying `said` is true of a scene whose full spec is `truth`
    (`scene_spec`): same number of objects and relation, and every stated attribute right.
    "a red shape" is true of every red object; "a red circle on the left" of fewer."""
    if len(truth.objects) != len(said.objects) or truth.relation != said.relation:
        return False
    return all(
        getattr(s, k) in (None, getattr(t, k))
        for t, s in zip(truth.objects, said.objects, strict=True)
        for k in ("colour", "shape", "size", "position")
    )


def scene_spec(scene: Scene) -> SceneSpec:
    """The spec a scene's captions state (normalised like `parse_caption`'s output)."""
    specs = [ObjectSpec(o.colour, o.shape, o.size) for o in scene.objects]
    if len(specs) == 1:
        o = scene.objects[0]
        return SceneSpec((ObjectSpec(o.colour, o.shape, o.size, position_of(o.x)),))
    return _normalise(specs, scene.relation)


# ----------------------------------------------------------------------------- datasets


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255)


def render_batch(scenes: list[Scene], resolution: int) -> torch.Tensor:
    """Scenes rendered at `resolution`: float32 (B, 3, R, R) in [0, 1], contiguous."""
    return torch.stack([to_tensor(render(s, resolution)) for s in scenes])


class ShapesDataset(torch.utils.data.Dataset):
    """A fixed-size Shapes dataset; item i is a pure function of (seed, i)."""

    def __init__(
        self,
        size: int,
        resolution: int,
        seed: int = 0,
        split: str = "train",
        n_objects: int | None = None,
    ) -> None:
        _check_split(split)
        self.size, self.resolution, self.seed = size, resolution, seed
        self.split, self.n_objects = split, n_objects

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        """{"image": (3, R, R) float32 in [0, 1], "caption": paraphrase, "canonical": str}."""
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} items")
        rng = np.random.default_rng([self.seed, i])
        scene = random_scene(rng, self.n_objects, self.split)
        image = to_tensor(render(scene, self.resolution))
        return {"image": image, "caption": caption(scene, rng), "canonical": caption(scene)}


def sample_scenes(
    rng: np.random.Generator,
    batch_size: int,
    split: str = "train",
    n_objects: int | None = None,
    twins: bool = False,
    two_objects: float = 0.5,
) -> list[Scene]:
    """Fresh scenes (`random_scene`); with `twins`, the second half holds a `twin` of each
    scene of the first."""
    n = batch_size - batch_size // 2 if twins else batch_size
    scenes = [random_scene(rng, n_objects, split, two_objects) for _ in range(n)]
    if twins:
        scenes += [twin(s, rng, split) for s in scenes[: batch_size - n]]
    return scenes


def sample_batch(
    rng: np.random.Generator,
    batch_size: int,
    resolution: int,
    split: str = "train",
    n_objects: int | None = None,
    twins: bool = False,
    unstated: float = 0.0,
    two_objects: float = 0.5,
) -> tuple[torch.Tensor, list[str]]:
    """Fresh training data: images (B, 3, R, R) float32 in [0, 1] and paraphrased captions
    (each attribute left unstated with probability `unstated`, see `caption`) of
    `sample_scenes`."""
    scenes = sample_scenes(rng, batch_size, split, n_objects, twins, two_objects)
    return render_batch(scenes, resolution), [caption(s, rng, unstated) for s in scenes]
