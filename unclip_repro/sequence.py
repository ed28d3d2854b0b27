"""The sequence model both priors share (§2.2 of unCLIP): a causal Transformer over
[caption token states, z_t, …], and the caption conditioning with its learned nulls for
classifier-free guidance. The diffusion prior (`prior.py`) and the autoregressive prior
(`ar_prior.py`) differ only in what follows the caption in the sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CausalTransformer(nn.Module):
    """Pre-norm Transformer (torch's own layers) under a causal mask plus key padding.

    Learned positions are added to the tokens after the caption only: the caption's token
    states carry their positions from CLIP already, so a batch's captions can be as long as its
    longest one, and masked padding changes nothing for any other token.
    """

    def __init__(self, width: int, layers: int, heads: int, max_len: int, dropout: float = 0.0):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.heads = heads
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(width)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.02)  # after the caption

    def forward(self, x: Tensor, valid: Tensor, prefix: int) -> Tensor:
        """x (B, S, width) with `prefix` caption tokens first; valid (B, S) keys -> (B, S, width).

        Position 0 must be valid in every row, so that no query is left with no key.
        """
        S = x.shape[1]
        x = torch.cat([x[:, :prefix], x[:, prefix:] + self.pos[: S - prefix]], dim=1)
        mask = torch.zeros(x.shape[0], S, S, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(self.blocked(valid), float("-inf"))
        return self.ln(self.blocks(x, mask=mask.repeat_interleave(self.heads, dim=0)))

    @staticmethod
    def blocked(valid: Tensor) -> Tensor:
        """(B, S, S) True where query i may not attend to key j: j > i (causal) or j padding."""
        S = valid.shape[1]
        causal = torch.ones(S, S, dtype=torch.bool, device=valid.device).triu(1)
        return causal[None] | ~valid[:, None, :]


class TextConditioning(nn.Module):
    """Caption token states and z_t projected to the Transformer's width, with learned nulls.

    `drop` (B,) bool replaces both by the null embeddings: classifier-free guidance's
    unconditional branch (§2.2 of unCLIP, Ho & Salimans 2022).
    """

    def __init__(self, text_width: int, embed_dim: int, width: int, max_tokens: int):
        super().__init__()
        self.tokens = nn.Linear(text_width, width)
        self.z_t = nn.Linear(embed_dim, width)
        self.max_tokens = max_tokens
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)
        self.null_z_t = nn.Parameter(torch.randn(width) * 0.02)

    def forward(
        self, tokens: Tensor, mask: Tensor, z_t: Tensor, drop: Tensor | None, scale: float
    ) -> tuple[Tensor, Tensor]:
        """-> sequence (B, L + 1, width) [tokens, z_t] and its valid keys (B, L + 1).

        L is the longest caption of the batch: padding past it is cut off.
        """
        L = max(int(mask.sum(1).max()), 1)
        if L > self.max_tokens:
            raise ValueError(f"{L} caption tokens, at most {self.max_tokens} fit this model")
        tokens, mask = tokens[:, :L], mask[:, :L].bool()  # (B, L, W), (B, L)
        seq = torch.cat([self.tokens(tokens), self.z_t(z_t * scale)[:, None]], dim=1)
        valid = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        if drop is not None:  # even with none dropped: DDP wants every parameter in the graph
            # a dropped caption is one null token (the rest masked) and a null z_t, so the
            # unconditional branch is the same whatever the other captions of the batch
            null = torch.cat([self.null_token.expand(L, -1), self.null_z_t[None]])[None]
            seq = torch.where(drop[:, None, None], null.to(seq.dtype), seq)  # (B, L + 1, w)
            null_valid = torch.zeros_like(valid[0])
            null_valid[0] = null_valid[-1] = True
            valid = torch.where(drop[:, None], null_valid, valid)
        return seq, valid
