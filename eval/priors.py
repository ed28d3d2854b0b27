"""How well does each prior predict the CLIP image embedding of a caption? (§2.2, §5.1 of unCLIP)

    python -m eval.priors                               # the stack shipped in the package
    python -m eval.priors --checkpoint runs/shapes      # one trained by `make train`

On held-out Shapes captions (colour–shape pairs never seen in training), for each prior:
- cos_true: cosine of the sampled ẑ_i with the true image's z_i;
- cos_text: with the caption's z_t;
- cos_unrelated: with the z_i of the images of every other caption, averaged (should be low);
- retrieval_exact / retrieval_match: the true image is CLIP's nearest of the n images to ẑ_i /
  the nearest image has the caption's content (the same canonical caption);
- ms_per_caption: sampling time; train_s: the prior's training time (from its checkpoint).
Two reference rows: the text embedding z_t used as ẑ_i (the §5.1 baseline), and the z_i of
*another* image of the same caption (the residual detail no prior can know: a ceiling).
Writes results/priors.csv, .json and .md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from eval.metrics import scene_set, write_results
from unclip_repro import checkpoint
from unclip_repro.checkpoint import components_folder
from unclip_repro.cli import Parser, UserError, run
from unclip_repro.clip import Clip, TextEncoding
from unclip_repro.components import load_component, load_preset
from unclip_repro.data import shapes
from unclip_repro.files import write_text
from unclip_repro.prior import TextEmbeddingPrior

COMMAND = "python -m eval.priors"


@torch.no_grad()
def heldout_embeddings(
    clip: Clip, n: int, resolution: int, seed: int = 0, split: str = "heldout"
) -> dict:
    """n seeded scenes of `split`: z_i, z_t, the TextEncoding, canonical captions, and the z_i
    of a redrawn image of each caption (same caption, new residual detail)."""
    scenes, rng = scene_set("priors", n, seed, split=split)
    twins = [shapes.redraw(s, rng) for s in scenes]
    captions = [shapes.caption(s, rng) for s in scenes]

    def encode_images(ss: list[shapes.Scene]) -> torch.Tensor:
        images = shapes.render_batch(ss, resolution)
        return torch.cat([clip.encode_image(chunk) for chunk in images.split(256)])

    text = clip.encode_text(captions)
    return {
        "z_i": encode_images(scenes),
        "z_i_redrawn": encode_images(twins),
        "text": text,
        "captions": captions,
        "canonical": [shapes.caption(s) for s in scenes],
    }


def _rows(text: TextEncoding, start: int, stop: int) -> TextEncoding:
    return TextEncoding(*(x[start:stop] for x in text))


def score(z_hat: torch.Tensor, data: dict) -> dict[str, float]:
    """The similarity and retrieval figures of predicted embeddings z_hat (n, D)."""
    z_i, z_t = data["z_i"], data["text"].z_t
    sims = z_hat @ z_i.T  # (n, n)
    nearest = sims.argmax(1).numpy()  # CLIP retrieval among the n images
    canonical = data["canonical"]
    ids = {c: k for k, c in enumerate(sorted(set(canonical)))}
    spec = torch.tensor([ids[c] for c in canonical])
    unrelated = spec[:, None] != spec[None, :]  # (n, n): pairs of different captions
    return {
        "cos_true": (z_hat * z_i).sum(-1).mean().item(),
        "cos_text": (z_hat * z_t).sum(-1).mean().item(),
        "cos_unrelated": sims[unrelated].mean().item(),
        "retrieval_exact": float(np.mean(nearest == np.arange(len(nearest)))),
        "retrieval_match": float(
            np.mean([canonical[j] == c for j, c in zip(nearest, canonical, strict=True)])
        ),
    }


@torch.no_grad()
def measure(
    clip: Clip,
    priors: dict[str, tuple[torch.nn.Module, dict]],
    n: int = 500,
    resolution: int = 32,
    seed: int = 0,
    batch_size: int = 250,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per prior (name -> (prior, sample kwargs)), plus the two reference rows."""
    data = heldout_embeddings(clip, n, resolution, seed)
    rows = []
    for name, (prior, kwargs) in tqdm(priors.items(), desc="priors", disable=not progress):
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        text = data["text"]
        z_hat = torch.cat(
            [
                prior.sample(_rows(text, i, i + batch_size), generator=generator, **kwargs)
                for i in range(0, n, batch_size)
            ]
        )
        ms = (time.perf_counter() - start) * 1000 / n
        rows.append({"prior": name, **score(z_hat, data), "ms_per_caption": ms})
    rows.append(
        {
            "prior": "reference: z_i of another image of the caption",
            **score(data["z_i_redrawn"], data),
        }
    )
    return pd.DataFrame(rows)


@torch.no_grad()
def plot_nearest(
    clip: Clip,
    prior: torch.nn.Module,
    n_captions: int = 5,
    gallery: int = 2000,
    resolution: int = 32,
    seed: int = 0,
    **sample_kwargs,
):
    """A figure: held-out captions, their true image, and the 4 gallery images nearest (CLIP
    cosine) to the z_i the prior samples for them. The gallery holds `gallery` scenes of any
    split, so a right answer is there to be found."""
    import matplotlib.pyplot as plt

    scenes, rng = scene_set("priors-figure", n_captions, seed, split="heldout")
    others = [shapes.random_scene(rng, split="any") for _ in range(gallery)]
    render = lambda ss: shapes.render_batch(ss, resolution)
    truth, images = render(scenes), render(others)
    z_gallery = torch.cat([clip.encode_image(chunk) for chunk in images.split(256)])
    captions = [shapes.caption(s) for s in scenes]
    z_hat = prior.sample(
        clip.encode_text(captions), generator=torch.Generator().manual_seed(seed), **sample_kwargs
    )
    sims = z_hat @ z_gallery.T  # (n, gallery)
    fig, axes = plt.subplots(n_captions, 5, figsize=(8, 1.75 * n_captions))
    for row, caption in enumerate(captions):
        axes[row, 0].imshow(truth[row].permute(1, 2, 0))
        axes[row, 0].set_title("true image", fontsize=7)
        axes[row, 0].set_ylabel(caption.replace(" ", "\n", 3), fontsize=7, rotation=0, ha="right")
        for col, j in enumerate(sims[row].topk(4).indices.tolist(), start=1):
            good = shapes.caption(others[j]) == caption
            axes[row, col].imshow(images[j].permute(1, 2, 0))
            axes[row, col].set_title(
                f"{sims[row, j]:.3f}", fontsize=7, color="green" if good else "red"
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("nearest gallery images to the sampled ẑ_i (green: the caption's content)")
    fig.tight_layout()
    return fig


def load_priors(
    runs: Path, variants: bool = True
) -> tuple[Clip, int, dict[str, tuple[torch.nn.Module, dict]], dict]:
    """CLIP and every trained prior in `runs` (with `variants`: also under other sampling
    settings), with their training seconds."""
    clip, preset = load_component(runs / "clip"), load_preset(runs / "clip")
    priors: dict[str, tuple[torch.nn.Module, dict]] = {
        "baseline: text embedding z_t as z_i (§5.1)": (TextEmbeddingPrior(), {}),
    }
    seconds = {}
    for stage, label in (("prior-diffusion", "diffusion prior"), ("prior-ar", "AR prior")):
        if not checkpoint.exists(runs / stage):
            print(f"note: no {stage} in {runs}; skipped", file=sys.stderr)
            continue
        prior = load_component(runs / stage)
        seconds[label] = checkpoint.load_config(runs / stage).get("train_seconds")
        priors[label] = (prior, {})  # the paper's settings (the preset's defaults)
        if not variants:
            continue
        if stage == "prior-diffusion":
            priors[f"{label}, 1 candidate"] = (prior, {"candidates": 1})
            priors[f"{label}, guidance 2"] = (prior, {"guidance": 2.0})
        else:
            priors[f"{label}, dot token from all"] = (prior, {"dot_percentile": 0.0})
            priors[f"{label}, guidance 2"] = (prior, {"guidance": 2.0})
            priors[f"{label}, guidance 2, temperature 0.7"] = (
                prior,
                {"guidance": 2.0, "temperature": 0.7},
            )
    return clip, preset.data.resolution, priors, seconds


def to_markdown(table: pd.DataFrame, command: str) -> str:
    """The results page."""
    return (
        "# Priors on held-out Shapes captions\n\n"
        f"Made by `{command}` (2 CPU cores). Cosines of the sampled ẑ_i with the true image's "
        "z_i, with the caption's z_t and with an unrelated image's z_i; CLIP retrieval of the "
        "true image (exact) or of an image with the caption's content (match) among all "
        "held-out images; sampling time per caption; training time.\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = Parser(prog=COMMAND, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="shapes", help="components folder, or 'shapes'")
    p.add_argument("--num-captions", type=int, default=500, help="held-out captions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results", help="where priors.csv / .json / .md go")

    def body() -> None:
        args = p.parse_args(argv)
        start = time.perf_counter()
        try:
            clip, resolution, priors, seconds = load_priors(components_folder(args.checkpoint))
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        torch.set_grad_enabled(False)
        table = measure(clip, priors, args.num_captions, resolution, args.seed)
        table["train_s"] = [
            next((v for k, v in seconds.items() if name.startswith(k)), None)
            for name in table.prior
        ]
        command = f"{COMMAND} --checkpoint {args.checkpoint} --num-captions {args.num_captions}"
        write_results(args.out, "priors", table, command, time.perf_counter() - start)
        write_text(Path(args.out) / "priors.md", to_markdown(table, command))
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
