"""Stand-ins for a download: a generated COCO-format folder of captioned pictures and a random
open_clip model saved to a local weights file, so the real-data path runs with no network
(`bench/gpu_check.py`, notebook 09). Nothing here is learned from: the pictures are a coloured
shape on a tinted background, the CLIP's weights are its random initialisation.

    coco = write_coco(root / "coco", n=64)         # {"annotations": …, "images": …}
    arch, weights = write_random_clip(root / "clip", TINY_CLIP)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

# an open_clip model config: a ViT and a text tower of width 64, two layers each (32 px images)
TINY_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
SHAPES = ("square", "circle")


def picture(i: int, size: tuple[int, int] = (96, 80)) -> tuple[Image.Image, str]:
    """Picture `i` (width, height `size`): a coloured square or circle on a tinted background,
    and its caption, e.g. "a red circle"."""
    rng = np.random.default_rng(i)
    colour, shape = list(COLOURS)[i % 3], SHAPES[(i // 3) % 2]
    w, h = size
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(150, 250, 3)))
    side = min(w, h) // 3
    x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
    draw = ImageDraw.Draw(image)
    box = (x, y, x + side, y + side)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return image, f"a {colour} {shape}"


def write_coco(root: str | Path, n: int = 64, size: tuple[int, int] = (96, 80)) -> dict[str, Path]:
    """`n` pictures as JPEG files in ROOT/images and their captions in ROOT/captions.json (the
    layout of COCO's captions_train2014.json); the `annotations` and `images` of a source."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        image, text = picture(i, size)
        name = f"{i:06d}.jpg"
        image.save(root / "images" / name, quality=90)
        images.append({"id": i, "file_name": name, "width": size[0], "height": size[1]})
        annotations.append({"id": i, "image_id": i, "caption": text})
    data = {"images": images, "annotations": annotations}
    (root / "captions.json").write_text(json.dumps(data))
    return {"annotations": root / "captions.json", "images": root / "images"}


def write_random_clip(
    root: str | Path, arch: str | dict[str, Any] = "ViT-B-32", seed: int = 0
) -> tuple[str, Path]:
    """A randomly initialised open_clip model saved as ROOT/open_clip.safetensors: `arch` an
    open_clip model name (its config ships with open_clip) or a model config (written to
    ROOT/model.json). Returns what `--clip-model` and `--clip-checkpoint` take."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if isinstance(arch, dict):
        (root / "model.json").write_text(json.dumps(arch))
        model, name = open_clip.CLIP(**arch), str(root / "model.json")
    else:
        model, name = open_clip.create_model(arch), arch
    weights = root / "open_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return name, weights
