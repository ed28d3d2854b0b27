"""UnCLIP: caption → prior → z_i → decoder → upsamplers → image, and the manipulations of §3.

The image's *bipartite latent* (z_i, x_T) of §3: z_i = CLIP's image embedding holds what
CLIP sees; x_T, found by DDIM inversion of the image through the decoder conditioned on
z_i, holds the rest. From it:
- variations: x_T and z_i kept, DDIM with η > 0 — the residual detail changes (§3.1);
- interpolations: slerp of z_i between two images, and of their inverted x_T (§3.2);
- text diffs: the paper's z_d = normalised (z_t(to) − z_t(from)), z_i rotated towards it by
  slerp with θ ∈ [0, 0.5] (§3.3); or z_i shifted by the difference of the diffusion prior's
  image embeddings for the two captions, by default with the decoder also reading the
  captions (inverted given "from", decoded given "to"); x_T inverted, η = 0;
- PCA truncation: z_i cut to its leading k principal components, decoded (Fig. 7, §3.4).
Every call is reproducible from its `seed`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checkpoint
from .clip import Clip, TextEncoding
from .components import PRIORS, STAGES, load_component
from .decoder import Decoder
from .prior import CaptionOnlyPrior, TextEmbeddingPrior
from .upsampler import Upsampler


class UnknownWordsWarning(UserWarning):
    """A caption holds words the model never saw in training."""


def slerp(a: Tensor, b: Tensor, theta: float | Tensor) -> Tensor:
    """Spherical interpolation between a and b (B, ...) at θ ∈ [0, 1] (Shoemake 1985), on the
    flattened vectors; θ may be a tensor (B,). Norms interpolate linearly."""
    shape = a.shape
    a, b = a.flatten(1), b.flatten(1)
    theta = torch.as_tensor(theta, dtype=a.dtype, device=a.device).reshape(-1, 1)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na, b / nb
    omega = (ua * ub).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7).acos()  # (B, 1)
    so = omega.sin()
    direction = (torch.sin((1 - theta) * omega) * ua + torch.sin(theta * omega) * ub) / so
    return (direction * ((1 - theta) * na + theta * nb)).reshape(shape)


# §3's manipulations invert and decode unguided: DDIM inversion under classifier-free guidance
# does not converge, and its latents decode to other images (results/manipulations.md)
MANIPULATION_GUIDANCE = 1.0
VARIATION_ETA = 0.8
TEXT_DIFFS = ("text", "prior", "caption")
TEXT_DIFF_METHOD = "caption"  # measured best of the three (results/manipulations.md)
TEXT_DIFF_AMOUNT = {
    "text": 0.5,
    "prior": 1.0,
    "caption": 1.0,
}  # the largest θ (slerp) or λ (shift) by default


def moved(method: str, z_i: Tensor, d: Tensor, amount: float | Tensor) -> Tensor:
    """z_i (B, D) moved by `amount` (scalar or (B,)) along d (B, D): the paper's slerp towards
    d for "text" (§3.3), else a shift z_i + λ d; renormalised either way."""
    amount = torch.as_tensor(amount, dtype=z_i.dtype).expand(len(z_i))
    if method == "text":
        return F.normalize(slerp(z_i, d, amount), dim=-1)
    return F.normalize(z_i + amount[:, None] * d, dim=-1)


@dataclass
class UnCLIP:
    """The whole generator; `UnCLIP.load("shapes")` gives the one shipped with the package."""

    clip: Clip
    decoder: Decoder
    priors: dict[str, torch.nn.Module]
    upsamplers: list[Upsampler]
    glide: Decoder | None = None

    @classmethod
    def load(cls, path: str | Path = "shapes", device: str | torch.device = "cpu") -> UnCLIP:
        """The components in folder `path` (clip/, decoder/, prior-*/, upsampler*/, glide/), or
        the shipped ones of a preset name ("shapes"). Each must have been trained on this CLIP."""
        folder = checkpoint.components_folder(path)
        for required in ("clip", "decoder"):
            if not checkpoint.exists(folder / required):
                raise checkpoint.CheckpointError(
                    f"no {required} checkpoint in {folder}: train it (python -m unclip_repro "
                    f"train --stage {required} --out {folder / required}) or run `make train`"
                )
        clip_id = checkpoint.identity(folder / "clip")
        loaded = {}
        for name in STAGES:
            if not checkpoint.exists(folder / name):
                continue
            config = checkpoint.load_config(folder / name)
            if name != "clip" and "clip" in config and config["clip"]["sha256"] != clip_id:
                raise checkpoint.CheckpointError(
                    f"{folder / name} was trained on another CLIP than {folder / 'clip'}: "
                    "retrain it or take the CLIP it was trained on"
                )
            loaded[name] = load_component(folder / name, device)
        priors = {
            "text": TextEmbeddingPrior(),
            "none": CaptionOnlyPrior(),
            **{kind: loaded[name] for kind, name in PRIORS.items() if name in loaded},
        }
        ups = [loaded[n] for n in ("upsampler1", "upsampler2") if n in loaded]
        return cls(loaded["clip"], loaded["decoder"], priors, ups, loaded.get("glide"))

    # --- text ------------------------------------------------------------------------------
    def encode_text(self, captions: list[str]) -> TextEncoding:
        """CLIP's (z_t, token states); warns, naming them, about words never seen in training."""
        unknown = sorted({w for c in captions for w in self.clip.unknown_words(c)})
        if unknown:
            warnings.warn(
                f"words never seen in training, read as 'unknown': {', '.join(unknown)}",
                UnknownWordsWarning,
                stacklevel=3,
            )
        return self.clip.encode_text(list(captions))

    def _upsample(self, images: Tensor, generator: torch.Generator, upsample: bool) -> Tensor:
        if upsample:
            for up in self.upsamplers:
                images = up.sample(images, generator=generator)
        return images

    # --- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        captions: list[str],
        seed: int = 0,
        prior: str = "diffusion",
        decoder_guidance: float | None = None,
        prior_guidance: float | None = None,
        steps: int | None = None,
        upsample: bool = True,
    ) -> Tensor:
        """Images (N, 3, H, W) in [0, 1] for N captions: prior ("diffusion", "ar", or the §5.1
        baselines "text" and "none") → decoder → upsamplers. Settings default to the configs."""
        if prior not in self.priors:
            raise ValueError(f"unknown prior {prior!r}; this model has: {', '.join(self.priors)}")
        generator = torch.Generator().manual_seed(seed)
        text = self.encode_text(captions)
        z_i = self.priors[prior].sample(text, guidance=prior_guidance, generator=generator)
        z_i = None if prior == "none" else z_i
        images = self.decoder.sample(
            text, z_i, guidance=decoder_guidance, steps=steps, generator=generator
        )
        return self._upsample(images, generator, upsample)

    @torch.no_grad()
    def generate_glide(
        self,
        captions: list[str],
        seed: int = 0,
        guidance: float | None = None,
        steps: int | None = None,
        upsample: bool = True,
    ) -> Tensor:
        """The GLIDE baseline's images for N captions (caption-only decoder, same upsamplers)."""
        if self.glide is None:
            raise checkpoint.CheckpointError("this model has no GLIDE baseline (glide/) loaded")
        generator = torch.Generator().manual_seed(seed)
        images = self.glide.sample(
            self.encode_text(captions), None, guidance=guidance, steps=steps, generator=generator
        )
        return self._upsample(images, generator, upsample)

    # --- the bipartite latent (§3) ---------------------------------------------------------
    def _base(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) or (3, H, W) in [0, 1] at the decoder's base resolution."""
        images = images[None] if images.ndim == 3 else images
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        R = self.decoder.resolution
        if images.shape[-1] != R or images.shape[-2] != R:
            images = F.interpolate(images.float(), size=(R, R), mode="area")
        return images.float().clamp(0, 1)

    @torch.no_grad()
    def invert(
        self,
        images: Tensor,
        guidance: float = MANIPULATION_GUIDANCE,
        steps: int | None = None,
        captions: list[str] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The bipartite latent (z_i (B, D), x_T (B, 3, R, R)) of images (§3), the decoder
        given z_i (and `captions`, one per image, if given). DDIM inversion retraces the
        sampler exactly only at the `guidance` the latent is later decoded with, and reliably
        only unguided (results/manipulations.md)."""
        base = self._base(images)
        z_i = self.clip.encode_image(base)
        text = None if captions is None else self.encode_text(captions)
        return z_i, self.decoder.invert(base, text, z_i, guidance=guidance, steps=steps)

    @torch.no_grad()
    def decode(
        self,
        z_i: Tensor,
        x_T: Tensor,
        eta: float = 0.0,
        guidance: float = MANIPULATION_GUIDANCE,
        steps: int | None = None,
        seed: int = 0,
        upsample: bool = True,
        text: TextEncoding | None = None,
    ) -> Tensor:
        """Images (B, 3, H, W) from bipartite latents (z_i (B, D), x_T (B, 3, R, R)) as
        `invert` gives them: DDIM from x_T's timestep with `eta` (0 retraces the inversion),
        the decoder also given `text`'s captions if any."""
        generator = torch.Generator().manual_seed(seed)
        images = self.decoder.sample(  # η = 0 retraces the inversion: no clipping of x̂_0
            text,
            z_i,
            guidance=guidance,
            steps=steps,
            eta=eta,
            noise=x_T,
            generator=generator,
            clip_x0=eta > 0,
            t_start=self.decoder.inversion_start,
        )
        return self._upsample(images, generator, upsample)

    @torch.no_grad()
    def variations(
        self,
        image: Tensor,
        n: int = 4,
        eta: float = VARIATION_ETA,
        guidance: float = MANIPULATION_GUIDANCE,
        steps: int | None = None,
        seed: int = 0,
        upsample: bool = True,
    ) -> Tensor:
        """n variations (n, 3, H, W) of one image: its z_i and inverted x_T, DDIM with η > 0."""
        z_i, x_T = self.invert(image, guidance, steps)
        z_i, x_T = z_i[:1].expand(n, -1), x_T[:1].expand(n, -1, -1, -1)
        return self.decode(z_i, x_T, eta, guidance, steps, seed, upsample)

    @torch.no_grad()
    def interpolate(
        self,
        image_a: Tensor,
        image_b: Tensor,
        n: int = 5,
        guidance: float = MANIPULATION_GUIDANCE,
        steps: int | None = None,
        seed: int = 0,
        upsample: bool = True,
    ) -> Tensor:
        """n images (n, 3, H, W) from a to b: slerp of z_i and of the inverted x_T, η = 0."""
        z_a, x_a = self.invert(image_a, guidance, steps)
        z_b, x_b = self.invert(image_b, guidance, steps)
        theta = torch.linspace(0, 1, n)
        z = F.normalize(slerp(z_a.expand(n, -1), z_b.expand(n, -1), theta), dim=-1)
        x_T = slerp(x_a.expand(n, -1, -1, -1), x_b.expand(n, -1, -1, -1), theta)
        return self.decode(z, x_T, 0.0, guidance, steps, seed, upsample)

    @torch.no_grad()
    def text_direction(
        self, captions_from: list[str], captions_to: list[str], method: str = TEXT_DIFF_METHOD,
        samples: int = 8, seed: int = 0,
    ) -> Tensor:  # fmt: skip
        """The direction (B, D) of each edit from → to that `text_diff` moves z_i along:
        "text", the paper's (§3.3): z_d = normalise(z_t(to) − z_t(from)), which lies in
        CLIP's *text*-embedding region; "prior" (and "caption"): the difference of the
        diffusion prior's mean image embeddings for the two captions (`samples` draws each), a
        move between image embeddings, where the decoder was trained."""
        if method == "text":
            z_t = self.encode_text([*captions_from, *captions_to]).z_t
            return F.normalize(z_t[len(captions_from) :] - z_t[: len(captions_from)], dim=-1)
        if method not in TEXT_DIFFS:
            raise ValueError(f"unknown text-diff method {method!r}: choose one of {TEXT_DIFFS}")
        if "diffusion" not in self.priors:
            raise checkpoint.CheckpointError("the prior text diff needs a diffusion prior")
        captions = [c for c in (*captions_from, *captions_to) for _ in range(samples)]
        generator = torch.Generator().manual_seed(seed)
        z = self.priors["diffusion"].sample(self.encode_text(captions), generator=generator)
        z = z.view(2, len(captions_from), samples, -1).mean(2)  # (2, B, D)
        return z[1] - z[0]

    @torch.no_grad()
    def text_diff(
        self,
        image: Tensor,
        caption_from: str,
        caption_to: str,
        n: int = 5,
        amount: float | None = None,
        method: str = TEXT_DIFF_METHOD,
        guidance: float = MANIPULATION_GUIDANCE,
        steps: int | None = None,
        seed: int = 0,
        upsample: bool = True,
    ) -> Tensor:
        """n images (n, 3, H, W) moving `image` along the text diff from → to (§3.3), with its
        inverted x_T and η = 0. "text" (the paper's): z = slerp(z_i, z_d, θ), θ from 0 to
        `amount` (default 0.5); "prior": z = normalise(z_i + λ Δ), λ from 0 to `amount`
        (default 1), Δ from `text_direction`; "caption": the prior's shift with the decoder
        reading the captions too, inverted given `caption_from` and decoded given
        `caption_to` (§2.1's text pathway), λ from 0 (the caption alone) to `amount`."""
        captions = [caption_from] if method == "caption" else None
        z_i, x_T = self.invert(image, guidance, steps, captions)
        d = self.text_direction([caption_from], [caption_to], method, seed=seed)  # (1, D)
        amounts = torch.linspace(0, amount or TEXT_DIFF_AMOUNT[method], n)
        z = moved(method, z_i[:1].expand(n, -1), d.expand(n, -1), amounts)
        text = None
        if method == "caption":
            text = self.encode_text([caption_to] * n)
        x_T = x_T[:1].expand(n, -1, -1, -1)
        return self.decode(z, x_T, 0.0, guidance, steps, seed, upsample, text)

    @torch.no_grad()
    def pca_truncations(
        self, images: Tensor, ks: list[int], seed: int = 0, upsample: bool = True
    ) -> Tensor:
        """Fig. 7 of unCLIP: each image's z_i kept to its leading k principal components
        (plus the mean; the PCA the AR prior fitted on the training pool), renormalised and
        decoded with the same noise and η = 0, for every k of `ks` -> (N · len(ks), 3, H, W),
        image-major."""
        if "ar" not in self.priors:
            raise checkpoint.CheckpointError("PCA truncation needs the AR prior's PCA (prior-ar/)")
        pca = self.priors["ar"].pca
        z_i = self.clip.encode_image(self._base(images))  # (N, D)
        coeff = (z_i - pca.mean) @ pca.components.T  # (N, D): coordinates, largest first
        z = torch.stack([pca.mean + coeff[:, :k] @ pca.components[:k] for k in ks], dim=1)
        z = F.normalize(z.flatten(0, 1), dim=-1)  # (N · len(ks), D)
        R = self.decoder.resolution
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(1, 3, R, R, generator=generator).expand(len(z), -1, -1, -1)
        decoded = self.decoder.sample(None, z, eta=0.0, noise=noise, generator=generator)
        return self._upsample(decoded, generator, upsample)
