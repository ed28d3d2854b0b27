"""§3's manipulations through the bipartite latent (z_i, x_T), measured with the oracle.

    python -m eval.manipulations                        # the shipped stack -> results/
    python -m eval.manipulations --num-images 16 --out /tmp/m   # a quick look

Seeded renders of training-pair scenes at the decoder's base resolution (one and two objects)
are inverted (z_i = CLIP(x), x_T = DDIM inversion through the decoder given z_i) and then:
- reconstruction: decoded back with η = 0, per steps and per guidance while inverting and
  while decoding: PSNR to the input and the share the oracle reads as the same objects
  (colour, shape, size, third);
- variations (§3.1): decoded with η > 0, n per image: the share that keep every attribute the
  image's caption states, and how much the rest varies (mean pixel distance between two
  variations of one image);
- interpolations (§3.2): slerp of z_i and x_T between two images, η = 0: endpoints the oracle
  reads as the inputs, frames that are a clean scene (one or two objects found), and pairs
  whose frames read as the first image, then as the second, with nothing in between;
- text diffs (§3.3), one-object images, one attribute edited (colour, shape, size, position):
  edit success (the oracle reads the new value) and preservation (the other three kept), per
  amount, for three directions: the paper's, slerp(z_i, normalize(z_t(to) − z_t(from)), θ);
  and two that move within the image-embedding region, z_i + λ Δ normalised, with Δ the
  difference of the mean CLIP image embeddings of renders of the two captions (`image`) or of
  the diffusion prior's samples for them (`prior`).
Writes OUT/manipulations.csv, .json (command, wall time, machine), .md and .png.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from eval.metrics import (
    cache_key,
    harness_parser,
    identities,
    load_model,
    psnr,
    save_figure,
    scene_set,
    write_results,
)
from unclip_repro.cli import run
from unclip_repro.data import oracle, shapes
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnCLIP, slerp

COMMAND = "python -m eval.manipulations"
ATTRIBUTES = ("colour", "shape", "size", "position")
VALUES = {
    "colour": tuple(shapes.COLOURS),
    "shape": shapes.SHAPES,
    "size": tuple(shapes.SIZES),
    "position": shapes.POSITIONS,
}
AMOUNTS = {"text": (0.0, 0.125, 0.25, 0.375, 0.5), "image": (0.0, 0.25, 0.5, 0.75, 1.0)}
AMOUNTS["prior"] = AMOUNTS["image"]


def _attributes(d: oracle.Detected) -> tuple[str, str, str, str]:
    """One detected object's (colour, shape, size, third): ATTRIBUTES, in order."""
    return d.colour, d.shape, d.size, shapes.position_of(d.x)


def objects(image: torch.Tensor) -> tuple:
    """What the oracle reads in an image: its objects' (colour, shape, size, third), sorted."""
    return tuple(sorted(_attributes(d) for d in oracle.detect(image)))


@torch.no_grad()
def invert(model: UnCLIP, images: torch.Tensor, guidance: float, steps: int):  # noqa: ANN201
    """(z_i, x_T) of images (B, 3, R, R) at the decoder's resolution."""
    z_i = model.clip.encode_image(images)
    return z_i, model.decoder.invert(images, None, z_i, guidance=guidance, steps=steps)


@torch.no_grad()
def decode(
    model: UnCLIP, z_i: torch.Tensor, x_T: torch.Tensor, guidance: float, steps: int, eta: float
) -> torch.Tensor:
    """Images (B, 3, R, R) from the bipartite latent, as UnCLIP's manipulations decode it."""
    g = torch.Generator().manual_seed(0)
    d = model.decoder
    return d.sample(
        None, z_i, guidance=guidance, steps=steps, eta=eta, noise=x_T, generator=g,
        clip_x0=eta > 0, t_start=d.inversion_start,
    )  # fmt: skip


def reconstruction(
    model: UnCLIP, images: torch.Tensor, steps: list[int], guidances: list[float]
) -> pd.DataFrame:
    """decode(invert(x)) with η = 0, per steps (both ways) and guidance during inversion and
    during decoding (every pair of `guidances`)."""
    keys = [objects(x) for x in images]
    rows = []
    for k in steps:
        for g_inv in guidances:
            z_i, x_T = invert(model, images, g_inv, k)
            for g in guidances:
                back = decode(model, z_i, x_T, g, k, 0.0)
                same = [objects(x) == key for x, key in zip(back, keys, strict=True)]
                rows.append(
                    {
                        "inversion_guidance": g_inv,
                        "guidance": g,
                        "steps": k,
                        "psnr": float(psnr(back, images).mean()),
                        "identical": float(np.mean(same)),
                    }
                )
    return pd.DataFrame(rows)


def variations(
    model: UnCLIP,
    images: torch.Tensor,
    captions: list[str],
    etas: list[float],
    guidance: float,
    steps: int,
    n: int = 4,
) -> pd.DataFrame:
    """n decodings of each image's latent at each η: kept attributes and the spread between."""
    z_i, x_T = invert(model, images, guidance, steps)
    B = len(images)
    rows = []
    for eta in etas:
        out = decode(
            model, z_i.repeat_interleave(n, 0), x_T.repeat_interleave(n, 0), guidance, steps, eta
        ).view(B, n, *images.shape[1:])
        kept = oracle.score_batch(out.flatten(0, 1), np.repeat(captions, n))["all"]
        spread = (out[:, 0] - out[:, 1]).abs().mean()
        rows.append({"eta": eta, "kept": float(kept.mean()), "spread": float(spread)})
    return pd.DataFrame(rows)


def interpolations(
    model: UnCLIP, a: torch.Tensor, b: torch.Tensor, guidance: float, steps: int, n: int = 7
) -> dict[str, float]:
    """Slerp of (z_i, x_T) from each image of `a` to the one of `b`, η = 0, n frames each."""
    (za, xa), (zb, xb) = invert(model, a, guidance, steps), invert(model, b, guidance, steps)
    theta = torch.linspace(0, 1, n)
    ends, valid, monotone = [], [], []
    for i in range(len(a)):
        z = F.normalize(
            slerp(za[i : i + 1].expand(n, -1), zb[i : i + 1].expand(n, -1), theta), dim=-1
        )
        x = slerp(xa[i : i + 1].expand(n, -1, -1, -1), xb[i : i + 1].expand(n, -1, -1, -1), theta)
        frames = decode(model, z, x, guidance, steps, 0.0)
        read = [objects(f) for f in frames]
        ends.append(read[0] == objects(a[i]) and read[-1] == objects(b[i]))
        valid.append(np.mean([1 <= len(r) <= 2 for r in read]))
        switches = sum(r != s for r, s in zip(read, read[1:], strict=False))
        monotone.append(switches <= 1)  # reads as a, then as b: nothing in between, no return
    return {
        "endpoints": float(np.mean(ends)),
        "valid_frames": float(np.mean(valid)),
        "switch_once": float(np.mean(monotone)),
    }


def reading(image: torch.Tensor) -> dict[str, str]:
    """The attributes of the one object the oracle finds ({} unless exactly one)."""
    found = oracle.detect(image)
    return dict(zip(ATTRIBUTES, _attributes(found[0]), strict=True)) if len(found) == 1 else {}


def _edit(spec: shapes.SceneSpec, attribute: str, rng: np.random.Generator) -> shapes.SceneSpec:
    """`spec` (one object) with `attribute` set to another of its values, drawn by `rng`."""
    (obj,) = spec.objects
    old = getattr(obj, attribute)
    new = rng.choice([v for v in VALUES[attribute] if v != old])
    fields = {"colour": obj.colour, "shape": obj.shape, "size": obj.size, "position": obj.position}
    return shapes.SceneSpec((shapes.ObjectSpec(**(fields | {attribute: str(new)})),))


def directions(
    model: UnCLIP, froms: list[str], tos: list[str], renders: int = 8
) -> dict[str, torch.Tensor]:
    """Per method, the direction (B, D) of each edit from → to (see the module docstring)."""
    text = model.encode_text(froms + tos).z_t
    out = {"text": F.normalize(text[len(froms) :] - text[: len(froms)], dim=-1)}
    rng = np.random.default_rng(0)

    def mean_image(captions: list[str]) -> torch.Tensor:  # (B, D)
        specs = [shapes.parse_caption(c) for c in captions for _ in range(renders)]
        images = shapes.render_batch(
            [shapes.realise(s, rng) for s in specs], model.decoder.resolution
        )
        return model.clip.encode_image(images).view(len(captions), renders, -1).mean(1)

    out["image"] = mean_image(tos) - mean_image(froms)
    if "diffusion" in model.priors:
        prior = model.priors["diffusion"]

        def mean_prior(captions: list[str]) -> torch.Tensor:
            repeated = [c for c in captions for _ in range(renders)]
            g = torch.Generator().manual_seed(0)
            z = prior.sample(model.encode_text(repeated), generator=g)
            return z.view(len(captions), renders, -1).mean(1)

        out["prior"] = mean_prior(tos) - mean_prior(froms)
    return out


def moved(method: str, z_i: torch.Tensor, d: torch.Tensor, amount: float) -> torch.Tensor:
    """z_i moved by `amount` along d: the paper's slerp for "text", a shift for the others."""
    if method == "text":
        return F.normalize(slerp(z_i, d, torch.full((len(z_i),), amount)), dim=-1)
    return F.normalize(z_i + amount * d, dim=-1)


def text_diffs(
    model: UnCLIP, scenes: list[shapes.Scene], guidance: float, steps: int, seed: int
) -> pd.DataFrame:
    """Edit success and preservation per (method, attribute, amount) on one-object scenes."""
    rng = np.random.default_rng(seed)
    R = model.decoder.resolution
    images = shapes.render_batch(scenes, R)
    z_i, x_T = invert(model, images, guidance, steps)
    rows = []
    for attribute in ATTRIBUTES:
        specs = [shapes.scene_spec(s) for s in scenes]
        edits = [_edit(s, attribute, rng) for s in specs]
        froms = [shapes.caption(shapes.realise(s, rng)) for s in specs]
        tos = [shapes.caption(shapes.realise(s, rng)) for s in edits]
        for method, d in directions(model, froms, tos).items():
            for amount in AMOUNTS[method]:
                out = decode(model, moved(method, z_i, d, amount), x_T, guidance, steps, 0.0)
                success, kept = [], []
                for image, spec, edit in zip(out, specs, edits, strict=True):
                    read = reading(image)
                    (want,), (was,) = edit.objects, spec.objects
                    success.append(read.get(attribute) == getattr(want, attribute))
                    others = [a for a in ATTRIBUTES if a != attribute]
                    kept.append(all(read.get(a) == getattr(was, a) for a in others))
                rows.append(
                    {
                        "method": method,
                        "attribute": attribute,
                        "amount": amount,
                        "success": float(np.mean(success)),
                        "preserved": float(np.mean(kept)),
                    }
                )
    return pd.DataFrame(rows)


def report(parts: dict[str, pd.DataFrame], command: str) -> str:
    """The Markdown report: one table per manipulation."""
    pct = lambda t, cols: t.assign(**{c: t[c].map("{:.0%}".format) for c in cols})  # noqa: E731
    text = [
        "# §3's manipulations, measured",
        "",
        f"Made by `{command}`. Oracle readings of decoded images; see the command's docstring.",
        "",
        "## Reconstruction: decode(invert(x)), η = 0 (guidance: inverting, then decoding)",
        "",
        pct(parts["reconstruction"], ["identical"]).to_markdown(index=False, floatfmt=".1f"),
        "",
        "## Variations (§3.1)",
        "",
        pct(parts["variations"], ["kept"]).to_markdown(index=False, floatfmt=".3f"),
        "",
        "## Interpolations (§3.2)",
        "",
        pct(parts["interpolations"], ["endpoints", "valid_frames", "switch_once"]).to_markdown(
            index=False
        ),
        "",
        "## Text diffs (§3.3), one-object images",
        "",
        "Mean over the four attributes; per attribute in manipulations.csv.",
        "",
    ]
    diffs = (
        parts["text_diffs"]
        .groupby(["guidance", "method", "amount"], as_index=False)[["success", "preserved"]]
        .mean()
    )
    text.append(pct(diffs, ["success", "preserved"]).to_markdown(index=False, floatfmt=".3f"))
    return "\n".join(text) + "\n"


def plot(parts: dict[str, pd.DataFrame], path) -> None:  # noqa: ANN001
    """Four panels: reconstruction PSNR, variations, and text-diff success and preservation."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    rec = parts["reconstruction"]
    for (gi, g), part in rec.groupby(["inversion_guidance", "guidance"]):
        axes[0].plot(part.steps, part.psnr, "o-", label=f"guidance {gi:g} → {g:g}")
    axes[0].set(title="reconstruction (η = 0)", xlabel="DDIM steps", ylabel="PSNR (dB)")
    var = parts["variations"]
    for g, part in var.groupby("guidance"):
        axes[1].plot(part.eta, part.kept, "o-", label=f"kept, guidance {g:g}")
        axes[1].plot(part.eta, part.spread * 4, "x--", label=f"spread × 4, guidance {g:g}")
    axes[1].set(title="variations", xlabel="η", ylabel="share / pixel distance")
    diffs = (
        parts["text_diffs"]
        .groupby(["guidance", "method", "amount"], as_index=False)[["success", "preserved"]]
        .mean()
    )
    for k, col in ((2, "success"), (3, "preserved")):
        for (g, method), part in diffs.groupby(["guidance", "method"]):
            x = part.amount / part.amount.max()
            axes[k].plot(x, part[col], "o-", label=f"{method}, guidance {g:g}")
        axes[k].set(
            title=f"text diffs: {col}", xlabel="amount (θ / 0.5 or λ)", ylabel="share", ylim=(0, 1)
        )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = harness_parser(COMMAND, __doc__, 64, "images per measure", batch_size=64)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    p.add_argument("--etas", type=float, nargs="+", default=[0.25, 0.5, 0.8, 1.0])
    p.add_argument(
        "--sample-steps", type=int, help="decoding steps of the other measures (the decoder's)"
    )
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])

    def body() -> int:
        args = p.parse_args(argv)
        if args.num_captions < 2 or min(args.steps) < 1 or min(args.guidance) < 0:
            p.error("need --num-captions ≥ 2, --steps ≥ 1 and --guidance ≥ 0")
        start = time.perf_counter()
        model = load_model(args.checkpoint)
        R, n = model.decoder.resolution, args.num_captions
        scenes = {k: scene_set("manipulations", n, args.seed, n_objects=k)[0] for k in (1, 2)}
        images = {k: shapes.render_batch(s, R) for k, s in scenes.items()}
        both = torch.cat([images[1], images[2]])
        captions = [shapes.caption(s) for s in scenes[1] + scenes[2]]
        steps = args.sample_steps or model.decoder.cfg.sample_steps
        jobs: list[tuple[str, Callable[[], pd.DataFrame]]] = [
            ("reconstruction", lambda: reconstruction(model, both, args.steps, args.guidance))
        ]
        pairs = (both[: n // 2], both[n // 2 : n])  # one-object images, two by two
        for g in args.guidance:
            jobs += [
                (
                    "variations",
                    lambda g=g: variations(model, both, captions, args.etas, g, steps).assign(
                        guidance=g
                    ),
                ),
                (
                    "interpolations",
                    lambda g=g: pd.DataFrame(
                        [{"guidance": g} | interpolations(model, *pairs, g, steps)]
                    ),
                ),
                (
                    "text_diffs",
                    lambda g=g: text_diffs(model, scenes[1], g, steps, args.seed).assign(
                        guidance=g
                    ),
                ),
            ]
        settings = {k: v for k, v in vars(args).items() if k != "out"}  # what the parts hold
        key = cache_key(settings=settings, weights=identities(args.checkpoint))
        parts: dict[str, list[pd.DataFrame]] = {}
        for i, (name, job) in enumerate(tqdm(jobs, desc="manipulations")):
            done = Path(args.out) / f"manipulations-parts-{key}" / f"{i}-{name}.csv"
            if not done.is_file():  # each finished part kept: a stopped run resumes
                write_text(done, job().to_csv(index=False))
            parts.setdefault(name, []).append(pd.read_csv(done))
        tables = {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}
        table = pd.concat([t.assign(measure=k) for k, t in tables.items()], ignore_index=True)
        write_results(args.out, "manipulations", table, command, time.perf_counter() - start)
        write_text(f"{args.out}/manipulations.md", report(tables, command))
        plot(tables, f"{args.out}/manipulations.png")
        print(report(tables, command))
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
