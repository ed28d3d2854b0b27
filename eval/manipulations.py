"""§3's manipulations through the bipartite latent (z_i, x_T), measured with the oracle.

    python -m eval.manipulations                        # the shipped stack -> results/
    python -m eval.manipulations --num-captions 16 --out /tmp/m   # a quick look

Seeded renders of training-pair scenes at the decoder's base resolution, one-object and
two-object sets apart, are inverted (z_i = CLIP(x), x_T = DDIM inversion through the decoder
given z_i) and then:
- reconstruction: decoded back with η = 0, per steps and per guidance while inverting and
  while decoding: PSNR to the input (median, and the share ≥ 30 dB) and the share the oracle
  reads as the same objects (colour, shape, size, third);
- variations (§3.1): decoded with η > 0, n per image: the share that keep every attribute the
  image's caption states (and each attribute apart), and how much the rest varies (mean pixel
  distance between two variations of one image);
- the ceiling: what the decoder draws from z_i alone from fresh noise, and from the caption
  and z_i together, per attribute: what a manipulation that keeps z_i can at most keep;
- interpolations (§3.2): slerp of z_i and x_T between two images, η = 0: endpoints the oracle
  reads as the inputs, frames that are a clean scene (as many objects as the inputs), and
  pairs whose frames read as the first image, then as the second, with nothing in between;
- text diffs (§3.3), one-object images, one attribute edited (colour, shape, size, position):
  edit success (the oracle reads the new value), preservation (the other three kept) and both
  at once, per amount, for three directions: the paper's, slerp(z_i, normalize(z_t(to) −
  z_t(from)), θ); and two shifts z_i + λ Δ (renormalised) that move between image embeddings,
  Δ the difference of the diffusion prior's mean samples for the two captions (`prior`, what
  `UnCLIP.text_diff` offers) or of the mean CLIP image embeddings of renders (`image`, Shapes
  only: it renders the captions); and `caption`: the prior's shift with the decoder reading the
  captions too (§2.1's text pathway), inverted given the "from" caption and decoded given the
  "to" one.
The manipulations invert and decode at the same guidance, as `UnCLIP`'s do. Shares carry 95%
Wilson intervals in the report. Writes OUT/manipulations.csv, .json (command, wall time,
machine), .md and .png.
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
from unclip_repro.clip import TextEncoding
from unclip_repro.data import oracle, shapes
from unclip_repro.data.captions import wilson
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnCLIP, moved, slerp

COMMAND = "python -m eval.manipulations"
ATTRIBUTES = ("colour", "shape", "size", "position")
VALUES = {
    "colour": tuple(shapes.COLOURS),
    "shape": shapes.SHAPES,
    "size": tuple(shapes.SIZES),
    "position": shapes.POSITIONS,
}
AMOUNTS = {"text": (0.0, 0.25, 0.5), "image": (0.5, 1.0)}  # θ = 0: the round trip
AMOUNTS["prior"] = (0.5, 1.0, 1.5)
AMOUNTS["caption"] = (0.0, 0.5, 1.0)  # λ = 0: the caption alone edits
MEASURES = ("reconstruction", "variations", "interpolations", "text_diffs", "ceiling")
GOOD_PSNR = 30.0  # dB at the decoder's resolution: issue 33's bar for a reconstruction


def _attributes(d: oracle.Detected) -> tuple[str, str, str, str]:
    """One detected object's (colour, shape, size, third): ATTRIBUTES, in order."""
    return d.colour, d.shape, d.size, shapes.position_of(d.x)


def objects(image: torch.Tensor) -> tuple:
    """What the oracle reads in an image: its objects' (colour, shape, size, third), sorted."""
    return tuple(sorted(_attributes(d) for d in oracle.detect(image)))


_INVERTED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # every measure inverts alike


def _rows(text: TextEncoding | None, i: int, j: int) -> TextEncoding | None:
    """Captions i to j of a batch's encoding (None stays None: no caption)."""
    return None if text is None else TextEncoding(*(f if f is None else f[i:j] for f in text))


@torch.no_grad()
def invert(  # noqa: ANN201
    model: UnCLIP, images: torch.Tensor, guidance: float, steps: int, batch: int = 64,
    text: TextEncoding | None = None,
):  # fmt: skip
    """(z_i, x_T) of images (B, 3, R, R) at the decoder's resolution, the decoder given z_i
    (and `text`'s captions, if any). Without captions, kept for the next measure that inverts
    the same images alike."""
    key = (id(model), images.data_ptr(), images.shape, guidance, steps)
    if text is not None or key not in _INVERTED:
        z_i = model.clip.encode_image(images)
        x_T = torch.cat([
            model.decoder.invert(images[i : i + batch], _rows(text, i, i + batch),
                                 z_i[i : i + batch], guidance=guidance, steps=steps)
            for i in range(0, len(images), batch)
        ])  # fmt: skip
        if text is not None:
            return z_i, x_T
        _INVERTED[key] = (z_i, x_T)
    return _INVERTED[key]


@torch.no_grad()
def decode(
    model: UnCLIP, z_i: torch.Tensor, x_T: torch.Tensor, guidance: float, steps: int, eta: float,
    batch: int = 64, text: TextEncoding | None = None,
) -> torch.Tensor:  # fmt: skip
    """Images (B, 3, R, R) from the bipartite latent, by `UnCLIP.decode` in batches (the
    decoder also given `text`'s captions, if any)."""
    return torch.cat([
        model.decode(z_i[i : i + batch], x_T[i : i + batch], eta, guidance, steps, seed=0,
                     upsample=False, text=_rows(text, i, i + batch))
        for i in range(0, len(z_i), batch)
    ])  # fmt: skip


def reconstruction(
    model: UnCLIP, images: torch.Tensor, steps: list[int], guidances: list[float], batch: int
) -> pd.DataFrame:
    """decode(invert(x)) with η = 0, per steps (both ways) and guidance during inversion and
    during decoding (every pair of `guidances`)."""
    keys = [objects(x) for x in images]
    rows = []
    for k in steps:
        for g_inv in guidances:
            z_i, x_T = invert(model, images, g_inv, k, batch)
            for g in guidances:
                back = decode(model, z_i, x_T, g, k, 0.0, batch)
                db = psnr(back, images)
                rows.append(
                    {
                        "inversion_guidance": g_inv,
                        "guidance": g,
                        "steps": k,
                        "psnr_median": float(db.median()),
                        f"psnr_{GOOD_PSNR:g}": float((db >= GOOD_PSNR).float().mean()),
                        "identical": float(np.mean([objects(x) == key
                                                    for x, key in zip(back, keys, strict=True)])),
                        "n": len(images),
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def variations(
    model: UnCLIP,
    images: torch.Tensor,
    captions: list[str],
    etas: list[float],
    guidance: float,
    steps: int,
    batch: int,
    n: int = 2,
) -> pd.DataFrame:
    """n decodings of each image's latent at each η: kept attributes and the spread between."""
    z_i, x_T = invert(model, images, guidance, steps, batch)
    B = len(images)
    rows = []
    for eta in etas:
        out = decode(
            model, z_i.repeat_interleave(n, 0), x_T.repeat_interleave(n, 0), guidance, steps,
            eta, batch,
        ).view(B, n, *images.shape[1:])  # fmt: skip
        scores = oracle.score_batch(out.flatten(0, 1), np.repeat(captions, n))
        kept = {f"kept_{c}": float(scores[c].mean()) for c in scores.columns if c != "all"}
        spread = (out[:, 0] - out[:, 1]).abs().mean()
        rows.append(
            {"eta": eta, "kept": float(scores["all"].mean()), **kept, "spread": float(spread),
             "n": B * n}
        )  # fmt: skip
    return pd.DataFrame(rows)


def interpolations(
    model: UnCLIP, a: torch.Tensor, b: torch.Tensor, guidance: float, steps: int, batch: int,
    n: int = 5,
) -> dict[str, float]:  # fmt: skip
    """Slerp of (z_i, x_T) from each image of `a` to the one of `b`, η = 0, n frames each."""
    (za, xa) = invert(model, a, guidance, steps, batch)
    (zb, xb) = invert(model, b, guidance, steps, batch)
    theta = torch.linspace(0, 1, n).repeat(len(a))  # (len(a) · n,), pair-major
    pair = lambda t: t.repeat_interleave(n, 0)  # noqa: E731
    z = F.normalize(slerp(pair(za), pair(zb), theta), dim=-1)
    frames = decode(model, z, slerp(pair(xa), pair(xb), theta), guidance, steps, 0.0, batch)
    ends, valid, monotone = [], [], []
    for i, chain in enumerate(frames.view(len(a), n, *a.shape[1:])):
        read = [objects(f) for f in chain]
        ends.append(read[0] == objects(a[i]) and read[-1] == objects(b[i]))
        count = len(objects(a[i]))
        valid.append(np.mean([len(r) == count for r in read]))
        switches = sum(r != s for r, s in zip(read, read[1:], strict=False))
        monotone.append(switches <= 1)  # reads as a, then as b: nothing in between, no return
    return {
        "endpoints": float(np.mean(ends)),
        "valid_frames": float(np.mean(valid)),
        "switch_once": float(np.mean(monotone)),
        "n": len(a),
    }


def ceiling(
    model: UnCLIP, images: torch.Tensor, captions: list[str], steps: int, batch: int
) -> pd.DataFrame:
    """What the decoder draws from z_i alone, from fresh noise (its own sampler, η and guidance
    at the decoder's defaults): the most a manipulation that keeps z_i can keep. Beside it, the
    same with the caption too, as generation conditions the decoder (§2.1)."""
    z_i = model.clip.encode_image(images)
    rows = []
    for name, text in (("z_i alone", None), ("caption and z_i", model.encode_text(captions))):
        out = []
        for i in range(0, len(images), batch):
            g = torch.Generator().manual_seed(i)
            out.append(model.decoder.sample(_rows(text, i, i + batch), z_i[i : i + batch],
                                            steps=steps, generator=g))  # fmt: skip
        scores = oracle.score_batch(torch.cat(out), captions)
        rows.append({"decoder given": name, "guidance": model.decoder.cfg.guidance,
                     "eta": model.decoder.cfg.eta, "all": float(scores["all"].mean()),
                     **{c: float(scores[c].mean()) for c in scores.columns if c != "all"},
                     "n": len(images)})  # fmt: skip
    return pd.DataFrame(rows)


def reading(image: torch.Tensor) -> dict[str, str]:
    """The attributes of the one object the oracle finds ({} unless exactly one)."""
    found = oracle.detect(image)
    return dict(zip(ATTRIBUTES, _attributes(found[0]), strict=True)) if len(found) == 1 else {}


def score_edits(
    images: torch.Tensor, before: list[shapes.SceneSpec], after: list[shapes.SceneSpec],
    attribute: str,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(success, preserved) per image of one-object edits of `attribute`: the oracle reads the
    edit's value, and every other attribute as it was."""
    success, kept = [], []
    for image, was_spec, want_spec in zip(images, before, after, strict=True):
        read = reading(image)
        (want,), (was,) = want_spec.objects, was_spec.objects
        success.append(read.get(attribute) == getattr(want, attribute))
        kept.append(all(read.get(a) == getattr(was, a) for a in ATTRIBUTES if a != attribute))
    return np.array(success), np.array(kept)


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
    out = {"text": model.text_direction(froms, tos, "text")}
    rng = np.random.default_rng(0)

    def mean_image(captions: list[str]) -> torch.Tensor:  # (B, D)
        specs = [shapes.parse_caption(c) for c in captions for _ in range(renders)]
        images = shapes.render_batch(
            [shapes.realise(s, rng) for s in specs], model.decoder.resolution
        )
        return model.clip.encode_image(images).view(len(captions), renders, -1).mean(1)

    out["image"] = mean_image(tos) - mean_image(froms)
    if "diffusion" in model.priors:
        out["prior"] = model.text_direction(froms, tos, "prior", samples=renders)
    return out


def text_diffs(
    model: UnCLIP, scenes: list[shapes.Scene], guidance: float, steps: int, seed: int,
    batch: int,
) -> pd.DataFrame:  # fmt: skip
    """Edit success and preservation per (method, attribute, amount) on one-object scenes."""
    rng = np.random.default_rng(seed)
    images = shapes.render_batch(scenes, model.decoder.resolution)
    z_i, x_T = invert(model, images, guidance, steps, batch)
    rows = []
    for attribute in ATTRIBUTES:
        specs = [shapes.scene_spec(s) for s in scenes]
        edits = [_edit(s, attribute, rng) for s in specs]
        froms = [shapes.caption(shapes.realise(s, rng)) for s in specs]
        tos = [shapes.caption(shapes.realise(s, rng)) for s in edits]
        found = directions(model, froms, tos)
        if "prior" in found:  # the prior's shift, the decoder also reading the captions
            found["caption"] = found["prior"]
            t_from, t_to = model.encode_text(froms), model.encode_text(tos)
            x_T_from = invert(model, images, guidance, steps, batch, text=t_from)[1]
        for method, d in found.items():
            for amount in AMOUNTS[method]:
                z = moved(method, z_i, d, amount)
                if method == "caption":
                    out = decode(model, z, x_T_from, guidance, steps, 0.0, batch, text=t_to)
                else:
                    out = decode(model, z, x_T, guidance, steps, 0.0, batch)
                success, kept = score_edits(out, specs, edits, attribute)
                rows.append(
                    {"method": method, "attribute": attribute, "amount": amount,
                     "success": float(success.mean()), "preserved": float(kept.mean()),
                     "both": float((success & kept).mean()), "n": len(scenes)}
                )  # fmt: skip
    return pd.DataFrame(rows)


def _with_interval(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Shares as 'p% (lo–hi)', the 95% Wilson interval over the row's n trials."""

    def cell(p: float, n: int) -> str:
        lo, hi = wilson(p, int(n), 1.96)
        return f"{p:.0%} ({lo:.0%}–{hi:.0%})"

    out = table.copy()
    for c in columns:
        out[c] = [cell(p, n) for p, n in zip(table[c], table["n"], strict=True)]
    return out


def best_text_diffs(diffs: pd.DataFrame) -> pd.DataFrame:
    """Per (guidance, method, attribute): the amount where success and preservation together
    are highest, with its three shares."""
    best = diffs.loc[diffs.groupby(["guidance", "method", "attribute"])["both"].idxmax()]
    return best[["guidance", "method", "attribute", "amount", "success", "preserved", "both", "n"]]


def _mean_diffs(diffs: pd.DataFrame) -> pd.DataFrame:
    """Text-diff shares averaged over the four attributes, per (guidance, method, amount)."""
    return diffs.groupby(["guidance", "method", "amount"], as_index=False).agg(
        success=("success", "mean"), preserved=("preserved", "mean"), both=("both", "mean"),
        n=("n", "sum"),
    )  # fmt: skip


def report(parts: dict[str, pd.DataFrame], command: str) -> str:
    """The Markdown report: one table per manipulation measured."""
    show = lambda t, cols, fmt=".1f": _with_interval(t, cols).to_markdown(  # noqa: E731
        index=False, floatfmt=fmt
    )
    text = [
        "# §3's manipulations, measured",
        "",
        f"Made by `{command}`. Oracle readings of decoded images; see the command's docstring.",
        "Shares with their 95% Wilson intervals; `n`: images (or pairs, or edits) per row.",
    ]
    if "reconstruction" in parts:
        text += [
            "", "## Reconstruction: decode(invert(x)), η = 0 (guidance: inverting, then decoding)",
            "", show(parts["reconstruction"], ["identical", f"psnr_{GOOD_PSNR:g}"]),
        ]  # fmt: skip
    if "ceiling" in parts:
        text += [
            "", "## What the decoder draws from z_i alone (the ceiling of the manipulations)", "",
            "Fresh noise, the decoder's own sampler; the oracle's share right per attribute of",
            "the image's caption:", "",
            show(parts["ceiling"], ["all"], ".3f"),
        ]  # fmt: skip
    if "variations" in parts:
        var = parts["variations"]
        cols = ["objects", "guidance", "eta", "kept"]
        cols += [c for c in var.columns if c.startswith("kept_")] + ["spread", "n"]
        text += [
            "", "## Variations (§3.1): inverted and decoded at the same guidance",
            "", show(var[cols], ["kept"], ".3f"),
        ]  # fmt: skip
    if "interpolations" in parts:
        text += [
            "", "## Interpolations (§3.2): each image to the next of its set",
            "", show(parts["interpolations"], ["endpoints", "valid_frames", "switch_once"]),
        ]  # fmt: skip
    if "text_diffs" in parts:
        diffs = parts["text_diffs"]
        text += [
            "", "## Text diffs (§3.3), one-object images", "",
            "Per attribute, the amount (θ for `text`, λ for the shifts) where an edit succeeds",
            "and keeps the rest most often:", "",
            show(best_text_diffs(diffs), ["success", "preserved", "both"], ".3g"), "",
            "Mean over the four attributes, per amount:", "",
            show(_mean_diffs(diffs), ["success", "preserved", "both"], ".3f"),
        ]  # fmt: skip
    return "\n".join(text) + "\n"


def plot(parts: dict[str, pd.DataFrame], path) -> None:  # noqa: ANN001
    """A panel per measure: reconstruction PSNR, variations, text-diff success and
    preservation (per attribute's mean)."""
    panels = [m for m in ("reconstruction", "variations") if m in parts]
    panels += ["success", "preserved"] if "text_diffs" in parts else []
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    axes = dict(zip(panels, axes[0], strict=True))
    if "reconstruction" in axes:
        ax = axes["reconstruction"]
        rec = parts["reconstruction"]
        for (k, gi, g), part in rec.groupby(["objects", "inversion_guidance", "guidance"]):
            ax.plot(part.steps, part.psnr_median, "o-", label=f"{k} obj, guidance {gi:g} → {g:g}")
        ax.axhline(GOOD_PSNR, color="grey", ls=":")
        ax.set(title="reconstruction (η = 0), median", xlabel="DDIM steps", ylabel="PSNR (dB)")
    if "variations" in axes:
        ax = axes["variations"]
        for (k, g), part in parts["variations"].groupby(["objects", "guidance"]):
            ax.plot(part.eta, part.kept, "o-", label=f"kept, {k} obj, guidance {g:g}")
            ax.plot(part.eta, part.spread * 4, "x--", label=f"spread × 4, {k} obj, g {g:g}")
        ax.set(title="variations", xlabel="η", ylabel="share / pixel distance", ylim=(0, 1))
    if "text_diffs" in parts:
        diffs = _mean_diffs(parts["text_diffs"])
        for col in ("success", "preserved"):
            for (g, method), part in diffs.groupby(["guidance", "method"]):
                x = part.amount / (0.5 if method == "text" else 1.0)
                axes[col].plot(x, part[col], "o-", label=f"{method}, guidance {g:g}")
            axes[col].set(title=f"text diffs: {col} (mean of 4 attributes)",
                          xlabel="amount (θ / 0.5 for text, λ for the shifts)", ylabel="share",
                          ylim=(0, 1))  # fmt: skip
    for ax in axes.values():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = harness_parser(COMMAND, __doc__, 200, "images per object count", batch_size=64)
    p.add_argument("--objects", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--measures", nargs="+", default=list(MEASURES), choices=MEASURES)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--steps", type=int, nargs="+", default=[25, 50],
                   help="inversion and decoding steps of the reconstruction")  # fmt: skip
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
        R, n, batch = model.decoder.resolution, args.num_captions, args.batch_size
        scenes = {k: scene_set("manipulations", n, args.seed, n_objects=k)[0] for k in args.objects}
        images = {k: shapes.render_batch(s, R) for k, s in scenes.items()}
        captions = {k: [shapes.caption(s) for s in v] for k, v in scenes.items()}
        steps = args.sample_steps or model.decoder.cfg.sample_steps
        # each part named by its measure and settings, so one run's parts serve a later run
        # with more measures or object counts
        jobs: list[tuple[str, Callable[[], pd.DataFrame]]] = []
        for k in args.objects:
            x = images[k]
            jobs.append(
                (
                    f"reconstruction-objects{k}",
                    lambda x=x, k=k: reconstruction(
                        model, x, args.steps, args.guidance, batch
                    ).assign(objects=k),
                )
            )
            jobs.append((f"ceiling-objects{k}", lambda x=x, k=k: ceiling(
                model, x, captions[k], steps, batch).assign(objects=k)))  # fmt: skip
            for g in args.guidance:
                jobs += [
                    (f"variations-objects{k}-guidance{g:g}", lambda x=x, k=k, g=g: variations(
                        model, x, captions[k], args.etas, g, steps, batch
                    ).assign(objects=k, guidance=g)),
                    (f"interpolations-objects{k}-guidance{g:g}",
                     lambda x=x, k=k, g=g: pd.DataFrame([
                         {"objects": k, "guidance": g}  # each image to the next
                         | interpolations(model, x, x.roll(1, 0), g, steps, batch)])),
                ]  # fmt: skip
        for g in args.guidance:
            if 1 in args.objects:
                jobs.append((f"text_diffs-guidance{g:g}", lambda g=g: text_diffs(
                    model, scenes[1], g, steps, args.seed, batch).assign(guidance=g)))  # fmt: skip
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "measures", "objects")}
        key = cache_key(settings=settings, weights=identities(args.checkpoint))
        parts: dict[str, list[pd.DataFrame]] = {}
        jobs = [(part, job) for part, job in jobs if part.split("-", 1)[0] in args.measures]
        for part, job in tqdm(jobs, desc="manipulations"):
            name = part.split("-", 1)[0]
            done = Path(args.out) / f"manipulations-parts-{key}" / f"{part}.csv"
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
