"""Solutions to the exercises of notebook 07 (manipulations through the bipartite latent).

Each function answers one exercise; `check()` asserts that each does what its exercise asks
(run by tests/test_solutions.py, a few seconds of CPU at 10 DDIM steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unclip_repro.clip import Clip
from unclip_repro.pipeline import UnCLIP, slerp


def _same_objects(image: torch.Tensor, reference: torch.Tensor) -> bool:
    """The oracle reads the same objects (colour, shape, size, third) in both images."""
    from unclip_repro.data import oracle, shapes

    def key(im: torch.Tensor) -> list:
        found = oracle.detect(im)
        return sorted((d.colour, d.shape, d.size, shapes.position_of(d.x)) for d in found)

    return key(image) == key(reference)


@torch.no_grad()
def round_trip_error(model: UnCLIP, image: torch.Tensor, steps: int, guidance: float) -> float:
    """Exercise 1: largest pixel error of invert (`steps` DDIM steps) then sample back, η = 0."""
    decoder = model.decoder
    z_i = model.clip.encode_image(image[None])
    x_T = decoder.invert(image[None], None, z_i, guidance=guidance, steps=steps)
    back = decoder.sample(
        None,
        z_i,
        guidance=guidance,
        steps=steps,
        eta=0.0,
        noise=x_T,
        clip_x0=False,
        t_start=decoder.inversion_start,
    )
    return float((back[0] - image).abs().max())


@torch.no_grad()
def variation_spread(
    model: UnCLIP, image: torch.Tensor, eta: float, n: int = 6, guidance: float = 1.0
) -> dict[str, float]:
    """Exercise 2: mean pixel distance of n variations at η to the image, and the fraction the
    oracle reads as the same objects."""
    out = model.variations(image, n=n, eta=eta, guidance=guidance, seed=0, upsample=False)
    return {
        "distance": float((out - image).abs().mean()),
        "oracle-identical": float(np.mean([_same_objects(x, image) for x in out])),
    }


@torch.no_grad()
def image_direction(clip: Clip, image_from: torch.Tensor, image_to: torch.Tensor) -> torch.Tensor:
    """Exercise 3: z_d = normalise(z_i(to) − z_i(from)) of two images (3, H, W) -> (1, D)."""
    z = clip.encode_image(torch.stack([image_from, image_to]))
    return F.normalize(z[1] - z[0], dim=-1)[None]


@torch.no_grad()
def diff_edit(
    model: UnCLIP,
    image: torch.Tensor,
    z_d: torch.Tensor,
    thetas: Sequence[float] | torch.Tensor,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Exercise 3: decode z_i slerped towards any unit direction z_d (1, D) by each θ, from the
    image's inverted x_T with η = 0 (§3.3 with z_d of your choice) -> (len(thetas), 3, R, R)."""
    z_i, x_T = model.invert(image, guidance)
    theta = torch.as_tensor(thetas, dtype=torch.float32)
    n = len(theta)
    z = F.normalize(slerp(z_i.expand(n, -1), z_d.expand(n, -1), theta), dim=-1)
    return model.decoder.sample(
        None,
        z,
        guidance=guidance,
        eta=0.0,
        noise=x_T.expand(n, -1, -1, -1),
        clip_x0=False,
        t_start=model.decoder.inversion_start,
    )


def check() -> None:
    """Assert that each solution does what its exercise asks."""
    from unclip_repro.data import shapes

    torch.manual_seed(0)
    model = UnCLIP.load("shapes")
    model.decoder.cfg.sample_steps = 10  # small and fast; the exercises use the notebook's
    R = model.decoder.resolution

    def render(colour: str) -> torch.Tensor:
        scene = shapes.Scene([shapes.Object(colour, "circle", "large", 0.2, 0.45, 0.0)], 0.3)
        return shapes.to_tensor(shapes.render(scene, R))

    red, blue = render("red"), render("blue")
    # Exercise 1: a round trip at guidance 1 returns the image closely, more so with more steps
    e10, e20 = round_trip_error(model, red, 10, 1.0), round_trip_error(model, red, 20, 1.0)
    assert e20 < e10 < 0.2, (e10, e20)
    # Exercise 2: η = 0 repeats the round trip; η = 1 spreads the variations further
    still, moved = variation_spread(model, red, 0.0, n=2), variation_spread(model, red, 1.0, n=2)
    assert still["distance"] < 0.02 and still["oracle-identical"] == 1.0, still
    assert moved["distance"] > 2 * still["distance"], (still, moved)
    # Exercise 3: a unit direction; with the text diff's direction, diff_edit is text_diff
    z_d = image_direction(model.clip, red, blue)
    assert z_d.shape == (1, model.clip.embed_dim) and torch.allclose(z_d.norm(), torch.tensor(1.0))
    captions = ["a large red circle on the left", "a large blue circle on the left"]
    z_t = model.clip.encode_text(captions).z_t
    text_d = F.normalize(z_t[1] - z_t[0], dim=-1)[None]
    ours = diff_edit(model, red, text_d, [0.0, 0.25], guidance=1.0)
    theirs = model.text_diff(
        red, *captions, n=2, amount=0.25, method="text", guidance=1.0, upsample=False
    )
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert (ours[0] - red).abs().max() < 0.2  # θ = 0 is the round trip
