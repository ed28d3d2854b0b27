"""The diffusion prior P(z_i | y) of §2.2 of unCLIP, and the baselines of §5.1.

A decoder-only Transformer with a causal mask reads the sequence

    [caption token states (L), z_t, timestep embedding, noised z_i, learned query]

and its output at the final (query) token is the *clean* embedding z_i: the prior is an
x_0-parametrised Gaussian diffusion trained with MSE, ‖f(z_i^(t), t, y) − z_i‖² (§2.2).

Scale. CLIP embeddings are unit-norm; the diffusion works on c · z with c chosen so the
components have unit-order variance, as the paper's 17.2 does for its 1024-d embeddings.
For a unit vector in D dimensions Σ_k z_k² = 1, so the mean square of a component is
exactly 1/D, and c = √D makes it 1 (`embed_scale=None`, the default). Our Shapes CLIP's
embeddings are close to isotropic (per-component variance 0.0154 against 1/64 = 0.0156),
so c = √64 = 8 gives unit variance; the paper's 17.2 sits below √1024 = 32, i.e. its
scaled components have RMS 0.54 — "unit order" rather than one (notebook 03 measures ours).

Classifier-free guidance. The text conditioning (caption tokens and z_t) is replaced by
learned null embeddings 10% of the time; the noised z_i, the timestep and the query are
never dropped (dropping the noised input too, as one popular reproduction's unconditional
branch did, makes the "unconditional" prediction blind to the sample being denoised).

Sampling: strided (64 steps in the paper) from N(0, I), `candidates` samples per caption,
keeping the one with the highest z_i · z_t (§2.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import ClipConfig, TextEncoding, clip_dims
from .diffusion import GaussianDiffusion, cosine_betas, guided, timestep_embedding
from .sequence import CausalTransformer, TextConditioning


@dataclass
class PriorConfig:
    """Size and diffusion settings of the diffusion prior (Table 3 of unCLIP for the paper)."""

    width: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    timesteps: int = 1000  # cosine schedule (Table 3)
    sample_steps: int = 64  # strided sampling (Table 3)
    eta: float = 1.0  # 1: ancestral strided sampling, as the paper; 0: DDIM
    text_drop: float = 0.1  # §2.2: text conditioning dropped 10% of the time
    candidates: int = 2  # §2.2: draw 2, keep the higher z_i · z_t
    guidance: float = 1.0  # classifier-free guidance scale at sampling (1: none)
    embed_scale: float | None = None  # c; None: √D (see the module docstring)


class DiffusionPrior(nn.Module):
    """P(z_i | y) by diffusion: `forward` is the training loss, `sample` draws z_i."""

    def __init__(self, cfg: PriorConfig, embed_dim: int, text_width: int, context_length: int):
        super().__init__()
        self.cfg, self.embed_dim = cfg, embed_dim
        self.scale = cfg.embed_scale or math.sqrt(embed_dim)  # c: unit-variance components
        self.diffusion = GaussianDiffusion(cosine_betas(cfg.timesteps), prediction="x0")
        w = cfg.width
        self.text = TextConditioning(text_width, embed_dim, w, context_length)
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.noised = nn.Linear(embed_dim, w)
        self.query = nn.Parameter(torch.randn(w) * 0.02)
        self.transformer = CausalTransformer(w, cfg.layers, cfg.heads, 4, cfg.dropout)
        self.out = nn.Linear(w, embed_dim)

    @classmethod
    def from_clip_config(cls, cfg: PriorConfig, clip_cfg: ClipConfig) -> DiffusionPrior:
        """A prior sized for the CLIP `clip_cfg` describes."""
        return cls(cfg, *clip_dims(clip_cfg))

    def denoise(
        self,
        x_t: Tensor,
        t: Tensor,
        tokens: Tensor,
        mask: Tensor,
        z_t: Tensor,
        drop: Tensor | None = None,
    ) -> Tensor:
        """x̂_0 = f(x_t, t, y): noised scaled z_i (B, D), t (B,) -> clean scaled z_i (B, D)."""
        B = x_t.shape[0]
        text, valid = self.text(tokens, mask, z_t, drop, self.scale)  # (B, L + 1, w)
        temb = self.time(timestep_embedding(t, self.cfg.width))  # (B, w)
        rest = torch.stack([temb, self.noised(x_t), self.query.expand(B, -1)], dim=1)  # (B, 3, w)
        seq = torch.cat([text, rest], dim=1)  # [tokens, z_t, t, x_t, query]: (B, L + 4, w)
        valid = torch.cat([valid, valid.new_ones(B, 3)], dim=1)  # (B, L + 4)
        h = self.transformer(seq, valid, prefix=text.shape[1] - 1)  # (B, L + 4, w)
        return self.out(h[:, -1])  # the query's output, (B, D)

    def forward(self, tokens: Tensor, mask: Tensor, z_t: Tensor, z_i: Tensor) -> Tensor:
        """Training loss: E_t ‖f(z_i^(t), t, y) − c z_i‖², text dropped with p = text_drop."""
        drop = torch.rand(z_i.shape[0], device=z_i.device) < self.cfg.text_drop  # (B,)
        kwargs = {"tokens": tokens, "mask": mask, "z_t": z_t, "drop": drop}
        return self.diffusion.training_loss(self.denoise, z_i * self.scale, model_kwargs=kwargs)

    @torch.no_grad()
    def sample(
        self,
        text: TextEncoding,
        guidance: float | None = None,
        steps: int | None = None,
        candidates: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """z_i (B, D), unit-norm, for the captions encoded in `text` (settings default to cfg)."""
        cfg = self.cfg
        n = candidates or cfg.candidates
        B, D = text.z_t.shape[0], self.embed_dim
        cond = {
            "tokens": text.tokens.repeat_interleave(n, 0),  # (B·n, L, W): n per caption
            "mask": text.mask.repeat_interleave(n, 0),
            "z_t": text.z_t.repeat_interleave(n, 0),
            "drop": torch.zeros(B * n, dtype=torch.bool, device=text.z_t.device),
        }
        uncond = {**cond, "drop": torch.ones_like(cond["drop"])}

        def model_fn(x_t: Tensor, t: Tensor, c: dict) -> Tensor:
            return self.denoise(x_t, t, **c)

        model = guided(model_fn, cond, uncond, cfg.guidance if guidance is None else guidance)
        x = self.diffusion.sample(
            model,
            (B * n, D),
            steps=steps or cfg.sample_steps,
            eta=cfg.eta if eta is None else eta,
            generator=generator,
            progress=progress,
            device=text.z_t.device,
        )
        z_i = F.normalize(x.float(), dim=-1).view(B, n, D)
        best = (z_i * text.z_t[:, None]).sum(-1).argmax(1)  # highest z_i · z_t, (B,)
        return z_i[torch.arange(B), best]


class TextEmbeddingPrior(nn.Module):
    """§5.1 baseline: the text embedding z_t fed where the image embedding z_i is expected."""

    def sample(self, text: TextEncoding, **_: object) -> Tensor:
        """z_t itself, (B, D)."""
        return text.z_t


class CaptionOnlyPrior(nn.Module):
    """§5.1 baseline: no image embedding at all, the decoder's z_i-dropped (caption-only) input."""

    def sample(self, text: TextEncoding, **_: object) -> Tensor:
        """Zeros (B, D): what the decoder sees when z_i is dropped for guidance."""
        return torch.zeros_like(text.z_t)
