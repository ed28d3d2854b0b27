"""The autoregressive prior P(z_i | y) of §2.2 of unCLIP: z_i as a sequence of discrete codes.

1. PCA of z_i, fitted on training embeddings: keep the fewest leading components whose
   discarded eigenvalues carry < 1% of the squared error (the paper: 319 of 1024), ordered
   by eigenvalue, largest first.
2. Each kept component is quantized into 1024 buckets with *equal-mass* edges (the 1/1024,
   …, 1023/1024 quantiles of that component on the training embeddings) and decoded to the
   mean of the training values in its bucket (the squared-error-optimal value for a bucket,
   Lloyd's condition). Why equal mass: at 1024 buckets any sensible edges make the
   quantization error negligible next to the 1% the PCA truncation leaves (notebook 04
   measures both), so the edges are chosen for the Transformer that models the codes:
   every code is equally frequent in training, no softmax class is dead or starved, and the
   finest buckets sit where embeddings are densest. (For squared error alone, uniform or
   p^(1/3)-companded edges would do slightly better on the tails.)
3. A causal Transformer reads [caption token states, z_t] as a prefix, then a token for the
   quantized dot product z_i · z_t, then the k component codes, and is trained with
   cross-entropy to predict each next token. At sampling time the dot-product token is
   drawn from the top half of its predicted distribution (the 50th percentile was the best
   of 50/70/85/95 in the paper), then the codes by temperature / top-k sampling, with
   classifier-free guidance on the logits (text dropped 10% of the time in training).

The PCA and both quantizers are buffers: they are saved with the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import ClipConfig, TextEncoding, clip_dims
from .diffusion import classifier_free_guidance
from .sequence import CausalTransformer, TextConditioning


@dataclass
class ARPriorConfig:
    """Size and sampling settings of the autoregressive prior (Table 3 of unCLIP for the paper)."""

    width: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    buckets: int = 1024  # §2.2: 1024 discrete buckets per component
    pca_error: float = 0.01  # keep components until the rest carry < 1% of the squared error
    text_drop: float = 0.1  # §2.2: text conditioning dropped 10% of the time
    dot_percentile: float = 50.0  # draw the z_i·z_t token from above this percentile
    temperature: float = 1.0
    top_k: int | None = None
    guidance: float = 1.0  # classifier-free guidance on the logits (1: none)


class PCA(nn.Module):
    """Principal components of the embeddings, ordered by eigenvalue; the first `k` are kept."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.eye(dim))  # rows, largest eigenvalue first
        self.register_buffer("eigenvalues", torch.zeros(dim))
        self.register_buffer("k", torch.tensor(dim))

    @torch.no_grad()
    def fit(self, z: Tensor, max_error: float) -> None:
        """Fit on z (N, D); k = fewest leading components leaving < max_error of the variance."""
        z = z.double()
        self.mean.copy_(z.mean(0))
        cov = (z - z.mean(0)).T @ (z - z.mean(0)) / len(z)  # (D, D)
        eigenvalues, vectors = torch.linalg.eigh(cov)  # ascending
        order = eigenvalues.flip(0).clamp(min=0), vectors.flip(1).T
        self.eigenvalues.copy_(order[0])
        self.components.copy_(order[1])
        self.k.fill_(int(self.kept(max_error)))

    def residual(self) -> Tensor:
        """Fraction of the variance left out by keeping the first j components, j = 0 … D."""
        tail = self.eigenvalues.flip(0).cumsum(0).flip(0)  # Σ_{m ≥ j} λ_m, (D,)
        return torch.cat([tail, tail.new_zeros(1)]) / self.eigenvalues.sum()  # (D + 1,)

    def kept(self, max_error: float) -> int:
        """The fewest leading components whose residual is below max_error."""
        return int((self.residual() >= max_error).sum().clamp(min=1))

    def encode(self, z: Tensor) -> Tensor:
        """z (N, D) -> its first k principal coordinates (N, k)."""
        return (z - self.mean) @ self.components[: int(self.k)].T

    def decode(self, coords: Tensor) -> Tensor:
        """Principal coordinates (N, k) -> z (N, D), not renormalised."""
        return coords @ self.components[: coords.shape[1]] + self.mean


class Quantizer(nn.Module):
    """Each of `columns` values into `buckets` equal-mass buckets, decoded to the bucket mean."""

    def __init__(self, columns: int, buckets: int):
        super().__init__()
        self.register_buffer("edges", torch.zeros(columns, buckets - 1))  # ascending per column
        self.register_buffer("values", torch.zeros(columns, buckets))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Edges at the 1/B … (B−1)/B quantiles of each column of x (N, C); bucket means."""
        buckets = self.values.shape[1]
        levels = torch.linspace(0, 1, buckets + 1, dtype=torch.float64)[1:-1]
        x = x.double()
        edges = torch.quantile(x, levels, dim=0).T.contiguous()  # (C, B − 1)
        codes = torch.searchsorted(edges, x.T.contiguous(), right=True)  # (C, N)
        sums = torch.zeros(x.shape[1], buckets, dtype=torch.float64)
        counts = torch.zeros_like(sums)
        sums.scatter_add_(1, codes, x.T)
        counts.scatter_add_(1, codes, torch.ones_like(x.T))
        # an empty bucket (ties, few samples) decodes to the middle of its edges
        lo = torch.cat([edges[:, :1], edges], 1)
        hi = torch.cat([edges, edges[:, -1:]], 1)
        self.edges.copy_(edges)
        self.values.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), (lo + hi) / 2))

    def encode(self, x: Tensor) -> Tensor:
        """Values (N, C) -> bucket codes (N, C) in [0, B)."""
        edges = self.edges[: x.shape[1]].to(x.dtype)
        return torch.searchsorted(edges, x.T.contiguous(), right=True).T  # (N, C)

    def decode(self, codes: Tensor) -> Tensor:
        """Bucket codes (N, C) -> bucket means (N, C)."""
        return self.values[: codes.shape[1]].gather(1, codes.T).T  # (N, C)


def ordinal_features(buckets: int, width: int) -> Tensor:
    """Sinusoidal features of the bucket index (buckets, width), unit-norm rows: the codes
    are ordered (equal-mass buckets of one value), so embeddings start smooth in the index and
    the model need not learn from scratch that bucket 511 is next to bucket 512."""
    u = (torch.arange(buckets) + 0.5) / buckets  # each bucket's quantile level, in (0, 1)
    freqs = torch.pi * torch.logspace(0, math.log10(buckets / 2), width // 2)  # 1 … B/2 cycles
    angles = u[:, None] * freqs[None]  # (buckets, width/2)
    feats = torch.cat([angles.cos(), angles.sin()], dim=1)  # (buckets, 2·(width/2))
    return F.normalize(F.pad(feats, (0, width % 2)), dim=1)  # unit-norm rows


def above_percentile(logp: Tensor, q: float) -> Tensor:
    """Log-probabilities (B, buckets) over ordered buckets, restricted to the buckets at or
    above the q-quantile (0 ≤ q < 1) of that distribution, e.g. its top half for q = 0.5."""
    cdf = logp.exp().cumsum(-1)  # (B, buckets), buckets in increasing value
    below = cdf < q * cdf[:, -1:]  # the bucket holding the quantile itself is kept
    return logp.masked_fill(below, float("-inf"))


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Logits (B, V) with all but the k largest of each row set to −inf (k = None: all kept)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


class Reconstruction(NamedTuple):
    """What encode -> decode alone loses: mean cosine to the input, relative squared error."""

    cosine: float
    relative_error: float
    pca_only_cosine: float


class ARPrior(nn.Module):
    """P(z_i | y) as a sequence of PCA codes: `forward` is the loss, `sample` draws z_i."""

    def __init__(self, cfg: ARPriorConfig, embed_dim: int, text_width: int, context_length: int):
        super().__init__()
        self.cfg, self.embed_dim, self.context_length = cfg, embed_dim, context_length
        self.scale = math.sqrt(embed_dim)  # z_t at unit-order variance, as the diffusion prior
        self.pca = PCA(embed_dim)
        self.codes = Quantizer(embed_dim, cfg.buckets)
        self.dot = Quantizer(1, cfg.buckets)
        w = cfg.width
        self.text = TextConditioning(text_width, embed_dim, w, context_length)
        self.embed_dot = nn.Embedding(cfg.buckets, w)
        self.embed_code = nn.Embedding(cfg.buckets, w)
        with torch.no_grad():  # ordered codes: neighbouring buckets start out alike
            ordinal = ordinal_features(cfg.buckets, w)
            self.embed_dot.weight.copy_(ordinal)
            self.embed_code.weight.copy_(ordinal)
        after_caption = 2 + embed_dim  # [z_t, dot, codes]
        self.transformer = CausalTransformer(w, cfg.layers, cfg.heads, after_caption, cfg.dropout)
        self.head_bias = nn.Parameter(torch.zeros(cfg.buckets))

    @classmethod
    def from_clip_config(cls, cfg: ARPriorConfig, clip_cfg: ClipConfig) -> ARPrior:
        """A prior sized for the CLIP `clip_cfg` describes."""
        return cls(cfg, *clip_dims(clip_cfg))

    @property
    def k(self) -> int:
        """The number of principal components kept."""
        return int(self.pca.k)

    @torch.no_grad()
    def fit(self, z_i: Tensor, z_t: Tensor) -> None:
        """Fit the PCA and both quantizers on training embeddings z_i, z_t (N, D)."""
        self.pca.fit(z_i, self.cfg.pca_error)
        coords = (z_i.double() - self.pca.mean.double()) @ self.pca.components.double().T  # (N, D)
        self.codes.fit(coords)
        self.dot.fit((z_i * z_t).sum(-1, keepdim=True))

    def encode(self, z_i: Tensor, z_t: Tensor) -> Tensor:
        """Embeddings -> the token sequence [dot code, k component codes], (B, 1 + k)."""
        dot = self.dot.encode((z_i * z_t).sum(-1, keepdim=True).float())  # (B, 1)
        return torch.cat([dot, self.codes.encode(self.pca.encode(z_i).float())], dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """Component codes (B, k) -> z_i (B, D), unit-norm (inverse quantization, inverse PCA)."""
        return F.normalize(self.pca.decode(self.codes.decode(codes)).float(), dim=-1)

    @torch.no_grad()
    def reconstruction(self, z_i: Tensor) -> Reconstruction:
        """What encode -> decode alone loses on z_i (N, D)."""
        codes = self.encode(z_i, z_i)[:, 1:]
        back = self.decode(codes)
        pca_only = F.normalize(self.pca.decode(self.pca.encode(z_i)).float(), dim=-1)
        error = (back - z_i).pow(2).sum(-1).mean() / (z_i - z_i.mean(0)).pow(2).sum(-1).mean()
        return Reconstruction(
            (back * z_i).sum(-1).mean().item(),
            error.item(),
            (pca_only * z_i).sum(-1).mean().item(),
        )

    def logits(
        self, tokens: Tensor, mask: Tensor, z_t: Tensor, seq: Tensor, drop: Tensor | None = None
    ) -> Tensor:
        """Next-token logits after each prefix: seq (B, m) of [dot, codes…] -> (B, m + 1, buckets).

        Row j predicts token j of [dot, c_1 … c_k] from the caption and tokens 0 … j−1.
        """
        text, valid = self.text(tokens, mask, z_t, drop, self.scale)  # (B, L + 1, w)
        emb = torch.cat([self.embed_dot(seq[:, :1]), self.embed_code(seq[:, 1:])], dim=1)
        x = torch.cat([text, emb], dim=1)  # (B, L + 1 + m, w)
        valid = torch.cat([valid, valid.new_ones(seq.shape)], dim=1)
        L = text.shape[1] - 1
        h = self.transformer(x, valid, prefix=L)[:, L:]  # from z_t's position on, (B, m + 1, w)
        # output embeddings tied to the input ones: logits for neighbouring buckets move together
        logits = torch.cat(
            [h[:, :1] @ self.embed_dot.weight.T, h[:, 1:] @ self.embed_code.weight.T], dim=1
        )
        return logits + self.head_bias

    def forward(self, tokens: Tensor, mask: Tensor, z_t: Tensor, z_i: Tensor) -> Tensor:
        """Cross-entropy of the next token, averaged over [dot, c_1 … c_k]; text dropped 10%."""
        target = self.encode(z_i, z_t)  # (B, 1 + k)
        drop = torch.rand(z_i.shape[0], device=z_i.device) < self.cfg.text_drop  # (B,)
        logits = self.logits(tokens, mask, z_t, target[:, :-1], drop)  # (B, 1 + k, buckets)
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())

    @torch.no_grad()
    def sample(
        self,
        text: TextEncoding,
        guidance: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        dot_percentile: float | None = None,
        generator: torch.Generator | None = None,
        **_: object,
    ) -> Tensor:
        """z_i (B, D), unit-norm, for the captions in `text` (settings default to cfg)."""
        cfg = self.cfg
        scale = cfg.guidance if guidance is None else guidance
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        q = (cfg.dot_percentile if dot_percentile is None else dot_percentile) / 100
        B, device = text.z_t.shape[0], text.z_t.device
        seq = torch.zeros(B, 0, dtype=torch.long, device=device)
        drop = torch.zeros(B, dtype=torch.bool, device=device)
        for j in range(1 + self.k):
            if scale == 1.0:
                logp = self.logits(text.tokens, text.mask, text.z_t, seq, drop)[:, -1]
            else:  # conditional and unconditional in one batch
                both = self.logits(
                    text.tokens.repeat(2, 1, 1),
                    text.mask.repeat(2, 1),
                    text.z_t.repeat(2, 1),
                    seq.repeat(2, 1),
                    torch.cat([drop, ~drop]),
                )[:, -1]
                cond, uncond = both.float().log_softmax(-1).chunk(2)
                logp = classifier_free_guidance(cond, uncond, scale)
            logp = logp.float().log_softmax(-1)  # (B, buckets)
            if j == 0:  # the dot-product token: only from the top of its distribution
                logp = above_percentile(logp, q)
            else:
                logp = top_k_filter(logp / max(temperature, 1e-6), top_k)
            token = torch.multinomial(logp.softmax(-1), 1, generator=generator)  # (B, 1)
            seq = torch.cat([seq, token], dim=1)
        return self.decode(seq[:, 1:])
