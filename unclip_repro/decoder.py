"""The decoder P(x | z_i, y) of §2.1 of unCLIP, and the GLIDE baseline.

A diffusion U-Net (`unet.UNet`, cosine schedule) at the base resolution, conditioned as §2.1
describes, on top of GLIDE's caption pathway (GLIDE §2.3):
- the caption's final token state is projected and added to the timestep embedding (GLIDE's
  "class embedding"), and all its token states are context every attention layer attends to;
- z_i is projected and *added to the timestep embedding* too;
- z_i is projected into 4 extra context tokens, concatenated to the caption's token states.
Classifier-free guidance: during training z_i is set to zero 10% of the time and the caption
is dropped 50% of the time (§2.1); sampling mixes the conditional prediction with the one
where both are dropped.

With `image_embedding=False` the same class conditions on the caption only: the **GLIDE
baseline** the paper compares unCLIP with (§5, §7).

The paper's decoder predicts ε. The Shapes preset predicts v = √ᾱ ε − √(1−ᾱ) x_0 instead
(Salimans & Ho 2022): in x_0 terms the ε loss weighs each timestep by its SNR, next to nothing
at the high noise levels where layout and count are decided, and a decoder trained for minutes
on 2 CPU cores ε-parametrised ignored its conditioning there (measured: position 36% vs 70%
right after the same 10 minutes of training).

Images are floats in [0, 1] outside and [−1, 1] inside the diffusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .clip import Clip, ClipConfig, TextEncoding, clip_dims, clip_vocab_size
from .diffusion import GaussianDiffusion, Prediction, cosine_betas, guided
from .unet import UNet, UNetConfig


class TextEncoder(nn.Module):
    """GLIDE's text encoder (GLIDE §2.3): a Transformer of the decoder's own over the caption's
    token ids, with its own token and position embeddings, trained by the diffusion loss.
    Unlike CLIP's text tower it is not causal (every state reads the whole caption), unless it
    starts as that tower (`load_clip`)."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        width: int,
        layers: int,
        heads: int,
        causal: bool = False,
    ):
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(vocab_size, width)
        # CLIP's (and GPT-2's) init: words and positions on one scale (nn.Embedding's N(0, 1)
        # made a position 1% of a word: a bag-of-words encoder, results/bench/text_encoder.md)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(context_length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, 0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(width)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L), mask (B, L) bool (padding False) -> token states (B, L, width)."""
        L = ids.shape[1]
        if L > len(self.pos):
            raise ValueError(f"{L} caption tokens, at most {len(self.pos)} fit this decoder")
        x = self.embed(ids) + self.pos[:L]
        keep = mask.clone()
        keep[:, 0] = True  # an empty row would attend to nothing (NaN); it is masked later
        causal = None
        if self.causal:  # (L, L) True where token i may not read token j > i
            causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).triu(1)
        return self.ln(self.blocks(x, mask=causal, src_key_padding_mask=~keep))

    @torch.no_grad()
    def load_clip(self, clip: Clip) -> None:
        """Start as `clip`'s text tower (open_clip's CLIP, its pre-norm blocks renamed to
        torch's): the token states are then CLIP's own, and the diffusion loss trains on."""
        m = clip.model
        if hasattr(m, "text") or not self.causal:
            raise ValueError("text_init = 'clip' needs a causal encoder and open_clip's CLIP")
        state = {
            "embed.weight": m.token_embedding.weight,
            "pos": m.positional_embedding,
            "ln.weight": m.ln_final.weight,
            "ln.bias": m.ln_final.bias,
        }
        for i, block in enumerate(m.transformer.resblocks):
            ours = f"blocks.layers.{i}."
            state[ours + "self_attn.in_proj_weight"] = block.attn.in_proj_weight
            state[ours + "self_attn.in_proj_bias"] = block.attn.in_proj_bias
            pairs = {
                "self_attn.out_proj": block.attn.out_proj,
                "norm1": block.ln_1,
                "norm2": block.ln_2,
                "linear1": block.mlp.c_fc,
                "linear2": block.mlp.c_proj,
            }
            for name, layer in pairs.items():
                state[f"{ours}{name}.weight"] = layer.weight
                state[f"{ours}{name}.bias"] = layer.bias
        try:
            self.load_state_dict(state)
        except RuntimeError:
            raise ValueError(
                "text_init = 'clip' needs the decoder's text_width, text_layers and text_heads "
                "to be the CLIP text tower's"
            ) from None


@dataclass
class DecoderConfig:
    """The decoder's U-Net, diffusion and conditioning settings (Table 3 for the paper)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    timesteps: int = 1000  # cosine schedule (Table 3)
    sample_steps: int = 50  # strided sampling (the paper: 250)
    # η of strided sampling: 1 is ancestral (the paper's "250 strided" steps), 0 is DDIM; the
    # Shapes decoder draws more captions right with 1 (docs/history.md, "What limits it")
    eta: float = 1.0
    guidance: float = 3.0  # classifier-free guidance scale at sampling
    image_embedding: bool = True  # False: the GLIDE baseline, caption only
    z_tokens: int = 4  # §2.1: z_i projected into 4 extra context tokens
    z_drop: float = 0.1  # §2.1: z_i set to zero 10% of the time
    text_drop: float = 0.5  # §2.1: caption dropped 50% of the time
    prediction: Prediction = "eps"  # what the U-Net predicts: "eps" (the paper), "v" or "x0"
    # GLIDE's own text Transformer over the caption's token ids, trained by the diffusion loss
    # (GLIDE §2.3, kept by unCLIP §2.1); 0 layers: read the frozen CLIP's token states instead
    text_layers: int = 0
    text_width: int = 128
    text_heads: int = 4
    # "clip": that encoder starts as the frozen CLIP's text tower, causal as it is, and trains
    # on (not the paper's: GLIDE's starts from scratch); None: from scratch, not causal
    text_init: str | None = None


class Decoder(nn.Module):
    """f_θ(x_t, t | z_i, y) at the base resolution, predicting ε, v or x_0 (`cfg.prediction`):
    `forward` is the loss, `sample` draws images."""

    def __init__(
        self,
        cfg: DecoderConfig,
        embed_dim: int,
        text_width: int,
        resolution: int,
        vocab_size: int = 49408,
        context_length: int = 77,
    ):
        super().__init__()
        self.cfg, self.embed_dim, self.resolution = cfg, embed_dim, resolution
        self.diffusion = GaussianDiffusion(cosine_betas(cfg.timesteps), prediction=cfg.prediction)
        text_width = cfg.text_width if cfg.text_layers else text_width
        context = cfg.unet.context_dim or text_width
        unet_cfg = UNetConfig(**{**cfg.unet.__dict__, "context_dim": context})
        self.unet = UNet(unet_cfg, resolution)
        self.text = nn.Linear(text_width, context)  # caption token states -> context
        # GLIDE's class embedding: the caption's final token state, added to the timestep emb
        self.text_emb = nn.Linear(text_width, self.unet.emb_dim)
        self.scale = math.sqrt(embed_dim)  # unit-variance components, as in the prior
        if cfg.image_embedding:
            self.z_emb = nn.Linear(embed_dim, self.unet.emb_dim)  # added to the timestep emb
            self.z_ctx = nn.Linear(embed_dim, cfg.z_tokens * context)  # 4 extra tokens
        self.text_encoder = None
        if cfg.text_layers:  # made last: the layers above draw the same initial weights
            if cfg.text_init not in (None, "clip"):
                raise ValueError(f"unknown text_init {cfg.text_init!r}: choose 'clip' or none")
            self.text_encoder = TextEncoder(
                vocab_size,
                context_length,
                cfg.text_width,
                cfg.text_layers,
                cfg.text_heads,
                causal=cfg.text_init == "clip",
            )

    @classmethod
    def from_clip_config(cls, cfg: DecoderConfig, clip_cfg: ClipConfig, resolution: int) -> Decoder:
        """A decoder sized for the CLIP `clip_cfg` describes (its tokenizer, for the decoder's
        own text encoder)."""
        D, W, L = clip_dims(clip_cfg)
        return cls(cfg, D, W, resolution, clip_vocab_size(clip_cfg), L)

    def read_caption(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The caption's token states (B, L, W) and mask (B, L), padding past the longest
        caption cut: the CLIP's states as given, or the decoder's own text encoder's over the
        ids (B, L'). Done once per batch (or per sample), not at every denoising step."""
        L = max(int(mask.sum(1).max()), 1)
        tokens, mask = tokens[:, :L], mask[:, :L]
        if self.text_encoder is not None:
            tokens = self.text_encoder(tokens, mask.bool())  # ids -> states (B, L, text_width)
        return tokens, mask

    def denoise(
        self,
        x_t: Tensor,
        t: Tensor,
        tokens: Tensor,
        mask: Tensor,
        z_i: Tensor,
        drop_text: Tensor | None = None,
        drop_z: Tensor | None = None,
    ) -> Tensor:
        """The U-Net's prediction (B, 3, R, R) of `cfg.prediction` (ε, v or x_0) for x_t
        (B, 3, R, R); tokens (B, L, W) and mask (B, L) as `read_caption` gives them, z_i (B, D).

        `drop_text` (B,) masks the caption out; `drop_z` (B,) sets z_i to zero.
        """
        lengths = mask.sum(1).long()  # (B,)
        mask = mask.bool()
        final = tokens[torch.arange(len(tokens)), (lengths - 1).clamp(min=0)]  # (B, W)
        keep = torch.ones_like(mask[:, 0]) if drop_text is None else ~drop_text  # (B,)
        mask = mask & keep[:, None]
        context = self.text(tokens)  # (B, L, C)
        emb = self.text_emb(final) * keep[:, None]  # (B, E), zero for a dropped caption
        if self.cfg.image_embedding:
            z = z_i * self.scale
            if drop_z is not None:
                z = torch.where(drop_z[:, None], torch.zeros_like(z), z)
            emb = emb + self.z_emb(z)  # (B, E)
            z_tokens = self.z_ctx(z).view(z.shape[0], self.cfg.z_tokens, -1)  # (B, 4, C)
            context = torch.cat([context, z_tokens], dim=1)  # (B, L + 4, C)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], self.cfg.z_tokens)], dim=1)
        return self.unet(x_t, t, emb, context, mask)

    def load_glide(self, weights: dict[str, Tensor]) -> None:
        """Start from a trained GLIDE baseline (`weights`, its state dict): the same U-Net and
        caption pathway, without z_i. The z_i layers start at zero, so the decoder first draws
        nearly what GLIDE draws (its 4 context tokens of zeros still take some attention) and
        then learns to read z_i. Our recipe, not the paper's (docs/history.md, "What limits it")."""
        if not self.cfg.image_embedding:
            raise ValueError("load_glide starts an unCLIP decoder; this one has no z_i")
        z_layers = ("z_emb.", "z_ctx.")
        missing, unexpected = self.load_state_dict(weights, strict=False)
        if unexpected or not all(k.startswith(z_layers) for k in missing):
            wrong = [*unexpected, *(k for k in missing if not k.startswith(z_layers))]
            raise ValueError(f"not a GLIDE baseline of this decoder: {', '.join(wrong[:3])}")
        for layer in (self.z_emb, self.z_ctx):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor, z_i: Tensor) -> Tensor:
        """Training loss: the MSE of the prediction target (ε, v or x_0, see
        `GaussianDiffusion.training_loss`) with the §2.1 conditioning dropout."""
        B, device = images.shape[0], images.device
        tokens, mask = self.read_caption(tokens, mask)
        kwargs = {
            "tokens": tokens,
            "mask": mask,
            "z_i": z_i,
            "drop_text": torch.rand(B, device=device) < self.cfg.text_drop,
            "drop_z": torch.rand(B, device=device) < self.cfg.z_drop,
        }
        t = torch.randint(0, self.diffusion.T, (B,), device=device)
        return self.diffusion.training_loss(self.denoise, images * 2 - 1, t, model_kwargs=kwargs)

    def conditioning(self, text: TextEncoding | None, z_i: Tensor | None) -> tuple[dict, dict]:
        """(conditional, unconditional) keyword sets for `denoise`; the unconditional one drops
        caption and z_i. `text=None` conditions on z_i alone (variations, §3); `z_i=None` on
        the caption alone (the caption-only baseline of §5.1, and GLIDE)."""
        ref = text.z_t if text is not None else z_i
        B, device = ref.shape[0], ref.device
        no = torch.zeros(B, dtype=torch.bool, device=device)
        if text is not None:  # the caption read once, for every step of the sampler
            ids = text.tokens if self.text_encoder is None else text.ids
            tokens, mask = self.read_caption(ids, text.mask)
        else:
            tokens, mask = torch.zeros(B, 1, self.text.in_features, device=device), ~no[:, None]
        cond = {
            "tokens": tokens,
            "mask": mask,
            "z_i": z_i if z_i is not None else torch.zeros(B, self.embed_dim, device=device),
            "drop_text": no if text is not None else ~no,
            "drop_z": no if z_i is not None else ~no,
        }
        return cond, {**cond, "drop_text": ~no, "drop_z": ~no}

    def guided_model(
        self, text: TextEncoding | None, z_i: Tensor | None, guidance: float | None = None
    ):  # noqa: ANN201
        """model(x_t, t) -> the guided prediction (ε, v or x_0), for `GaussianDiffusion.sample` and
        `ddim_invert`."""
        cond, uncond = self.conditioning(text, z_i)
        scale = self.cfg.guidance if guidance is None else guidance
        return guided(lambda x, t, c: self.denoise(x, t, **c), cond, uncond, scale)

    @torch.no_grad()
    def sample(
        self,
        text: TextEncoding | None,
        z_i: Tensor | None = None,
        guidance: float | None = None,
        steps: int | None = None,
        eta: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        clip_x0: bool = True,
        t_start: int | None = None,
    ) -> Tensor:
        """Images (B, 3, R, R) in [0, 1] for captions `text` and image embeddings z_i (B, D).

        `noise` is x_T (the bipartite latent's second half, §3); settings left None take the
        config's (`steps`: `cfg.sample_steps` strided steps).
        `clip_x0=False` keeps x̂_0 unclipped, as `invert` does, so that η = 0 sampling from an
        inverted x_T retraces the inversion exactly.
        """
        cfg = self.cfg
        B, R = (text.z_t if text is not None else z_i).shape[0], self.resolution
        x = self.diffusion.sample(
            self.guided_model(text, z_i, guidance),
            (B, 3, R, R),
            steps=steps or cfg.sample_steps,
            eta=cfg.eta if eta is None else eta,
            noise=noise,
            generator=generator,
            clip_x0=(-1.0, 1.0) if clip_x0 else None,
            progress=progress,
            device=(text.z_t if text is not None else z_i).device,
            t_start=t_start,
        )
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def invert(
        self,
        images: Tensor,
        text: TextEncoding | None,
        z_i: Tensor,
        guidance: float | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """x_T of `images` (B, 3, R, R) in [0, 1] by DDIM inversion through the decoder
        conditioned on z_i (§3 of unCLIP): the half of the bipartite latent (z_i, x_T) that
        holds what z_i does not. It lives at t = `self.inversion_start` (ᾱ ≈ 1e−3, see
        `GaussianDiffusion.invertible_start`): sampling from there with η = 0, no clipping and
        the same settings gives the image back."""
        model = self.guided_model(text, z_i, guidance)
        steps = steps or self.cfg.sample_steps
        return self.diffusion.ddim_invert(
            model, images * 2 - 1, steps, t_start=self.inversion_start
        )

    @property
    def inversion_start(self) -> int:
        """The timestep inverted latents live at (and sampling from them starts at)."""
        return self.diffusion.invertible_start()
