"""Solutions to the exercises of notebook 02 (CLIP and the Shapes world).

Each function answers one exercise; `check()` asserts that each does what its exercise asks
(run by tests/test_solutions.py, a few seconds of CPU).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unclip_repro.data import shapes


# Exercise 1: what batch size does to the loss
def loss_by_batch_size(z_i: Tensor, z_t: Tensor, t: float, sizes: list[int]) -> dict[int, float]:
    """CLIP's symmetric loss on the first b pairs of (z_i, z_t), for each b in `sizes`, beside
    ln b, the loss of a CLIP that cannot tell the b pairs apart."""
    out = {}
    for b in sizes:
        logits = math.exp(t) * z_i[:b] @ z_t[:b].T  # (b images, b captions)
        labels = torch.arange(b)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        out[b] = float(loss)
    return out


# Exercise 2: the loss a fixed temperature allows
def loss_floor(batch_size: int, scale: float) -> float:
    """The loss of B perfectly matched pairs spread as a regular simplex (every z_i = its z_t,
    every other pair at cosine -1/(B-1)) at logit scale e^t = `scale`: a lower bound on CLIP's
    loss at that scale (reached when D >= B - 1)."""
    b = batch_size
    return math.log1p((b - 1) * math.exp(-scale * b / (b - 1)))


def simplex(batch_size: int, dim: int) -> Tensor:
    """B unit vectors in R^dim (dim >= B) with pairwise cosine -1/(B-1): centred one-hots."""
    e = torch.eye(batch_size, dim, dtype=torch.float64)
    return F.normalize(e - e.mean(0, keepdim=True), dim=-1)


# Exercise 3: hard negatives, the same caption with the colours swapped
def swapped_caption(scene: shapes.Scene, seed: int | None = None) -> str | None:
    """The caption of a two-object scene with its two colours swapped, in the paraphrase that
    `shapes.caption(scene, np.random.default_rng(seed))` draws (canonical if seed is None);
    None where swapping changes nothing (one object, or both objects the same colour)."""
    if len(scene.objects) != 2 or scene.objects[0].colour == scene.objects[1].colour:
        return None
    a, b = scene.objects
    objects = [replace(a, colour=b.colour), replace(b, colour=a.colour)]
    rng = None if seed is None else np.random.default_rng(seed)
    return shapes.caption(replace(scene, objects=objects), rng)


def hard_negative_batch(
    rng: np.random.Generator, batch_size: int, resolution: int = 32
) -> tuple[Tensor, list[str], list[str], Tensor]:
    """A training batch with a hard negative per image: images (B, 3, R, R), captions,
    negatives (the colour-swapped caption in the same words, or the caption itself where there
    is none) and has_neg (B,) bool."""
    scenes = shapes.sample_scenes(rng, batch_size)
    seeds = rng.integers(2**32, size=batch_size).tolist()  # one paraphrase for both captions
    captions = [
        shapes.caption(s, np.random.default_rng(k)) for s, k in zip(scenes, seeds, strict=True)
    ]
    swapped = [swapped_caption(s, k) for s, k in zip(scenes, seeds, strict=True)]
    negatives = [n if n is not None else c for n, c in zip(swapped, captions, strict=True)]
    has_neg = torch.tensor([n is not None for n in swapped])
    return shapes.render_batch(scenes, resolution), captions, negatives, has_neg


def clip_loss_hard_negatives(
    z_i: Tensor, z_t: Tensor, z_neg: Tensor, has_neg: Tensor, t: Tensor | float
) -> Tensor:
    """CLIP's symmetric loss where image j also competes against its own hard-negative caption
    z_neg[j] (where has_neg[j]): the image -> text softmax runs over B + 1 captions."""
    scale = torch.as_tensor(t).exp()
    logits = scale * z_i @ z_t.T  # (B images, B captions)
    labels = torch.arange(len(z_i))
    neg = scale * (z_i * z_neg).sum(-1, keepdim=True)  # (B, 1): image j vs its swapped caption
    neg = neg.masked_fill(~has_neg[:, None], float("-inf"))
    image_loss = F.cross_entropy(torch.cat([logits, neg], 1), labels)
    text_loss = F.cross_entropy(logits.T, labels)
    return (image_loss + text_loss) / 2


# Exercise 4: a text encoder that does not read word order
WORDS = ["<pad>", *sorted(shapes.VOCABULARY)]
_INDEX = {w: i for i, w in enumerate(WORDS)}


def tokenize(captions: list[str]) -> Tensor:
    """Captions -> word ids (B, L), padded with 0 (the notebook's tokenizer)."""
    ids = [[_INDEX[w] for w in re.findall(r"[a-z]+", c.lower())] for c in captions]
    length = max(map(len, ids))
    return torch.tensor([x + [0] * (length - len(x)) for x in ids])


class BagOfWords(nn.Module):
    """g(y) as the mean of the caption's word embeddings, then an MLP: blind to word order."""

    def __init__(self, dim: int = 64, width: int = 64):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), width, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, dim))

    def forward(self, ids: Tensor) -> Tensor:
        """Word ids (B, L) -> unnormalised text embeddings (B, D)."""
        mask = (ids != 0).float()[..., None]  # (B, L, 1)
        return self.mlp((self.embed(ids) * mask).sum(1) / mask.sum(1))


def check() -> None:
    """Each solution does what its exercise asks."""
    torch.manual_seed(0)
    reference = open_clip.ClipLoss()
    # 1: ln b for a CLIP that cannot tell pairs apart; open_clip's loss at every b
    z = F.normalize(torch.randn(64, 16), dim=-1)
    losses = loss_by_batch_size(z, z, 0.0, [8, 64])
    flat = loss_by_batch_size(z, z.flip(0), -30.0, [8, 64])  # logits ~ 0: uniform softmax
    assert all(abs(flat[b] - math.log(b)) < 1e-4 for b in (8, 64)), flat
    assert abs(losses[64] - float(reference(z, z, torch.tensor(1.0)))) < 1e-5
    # ... and with embeddings that match but are not far apart, more negatives cost more
    near = F.normalize(torch.randn(64, 16) * 0.1 + torch.randn(16), dim=-1)
    grow = loss_by_batch_size(near, near, math.log(20), [4, 16, 64])
    assert grow[4] < grow[16] < grow[64], grow
    # 2: the simplex reaches the floor; random embeddings stay above it; t=0 leaves it high
    for b, s in ((8, 1.0), (8, 20.0), (16, 5.0)):
        u = simplex(b, 32)
        got = float(reference(u, u, torch.tensor(s, dtype=torch.float64)))
        assert abs(got - loss_floor(b, s)) < 1e-9, (got, loss_floor(b, s))
        v = F.normalize(torch.randn(b, 32, dtype=torch.float64), dim=-1)
        assert float(reference(v, v, torch.tensor(s, dtype=torch.float64))) > loss_floor(b, s)
    assert loss_floor(128, 1.0) > 0.75 * math.log(128) and loss_floor(128, 100.0) < 1e-30
    # 3: swapped captions; without negatives the loss is CLIP's; a close negative costs more
    rng = np.random.default_rng(0)
    scene = shapes.random_scene(rng, n_objects=2)
    while scene.objects[0].colour == scene.objects[1].colour:
        scene = shapes.random_scene(rng, n_objects=2)
    swapped = shapes.parse_caption(swapped_caption(scene))
    assert swapped != shapes.scene_spec(scene)
    true, false = shapes.caption(scene, np.random.default_rng(5)), swapped_caption(scene, 5)
    colours = {*shapes.COLOURS, "purple"}  # purple: magenta's synonym
    assert [w for w in true.split() if w not in colours] == [
        w for w in false.split() if w not in colours
    ], (true, false)  # the same words but for the colours
    assert {o.colour for o in swapped.objects} == {o.colour for o in scene.objects}
    images, captions, negatives, has_neg = hard_negative_batch(rng, 32)
    assert images.shape == (32, 3, 32, 32) and has_neg.any() and not has_neg.all()
    z_i, z_t = F.normalize(torch.randn(2, 32, 16), dim=-1)
    none = torch.zeros(32, dtype=torch.bool)
    plain = reference(z_i, z_t, torch.tensor(math.e))
    assert torch.allclose(clip_loss_hard_negatives(z_i, z_t, z_t, none, 1.0), plain)
    assert clip_loss_hard_negatives(z_i, z_t, z_i, has_neg, 1.0) > plain
    # 4: a bag of words gives colour-swapped captions the very same embedding
    g = BagOfWords()
    a = "a large red circle to the left of a small blue square"
    b = "a large blue circle to the left of a small red square"
    z_a, z_b = g(tokenize([a, b]))
    assert torch.allclose(z_a, z_b, atol=1e-6)  # equal but for the order of a float sum
