"""CLIP, the frozen joint embedding space unCLIP is built on (§2 of unCLIP), on open_clip.

Two ways to get one:
- a small CLIP trained from scratch on the Shapes world with open_clip's model classes,
  tokenizer and contrastive loss (`ClipConfig` with `pretrained=None`);
- a pretrained OpenCLIP model read from a local checkpoint file (`pretrained="ViT-B-32"`,
  `checkpoint="/path/open_clip_model.safetensors"`), or an architecture open_clip does not
  know by name (`model_config`, the content of an open_clip model-config JSON); nothing is
  ever downloaded. `pretrained_config` makes that config from the CLI's --clip-model and
  --clip-checkpoint; `python -m unclip_repro train --stage clip` then stores the model in a
  run folder, from which every later stage loads it (never from the original file again).

`encode_text` gives z_t and the per-token states (both priors and the decoder need the
token states, §2.1/§2.2), `encode_image` gives z_i. Both embeddings are unit-norm, as in
the paper. Images come in as floats in [0, 1]; normalisation and resizing happen here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn


@dataclass
class ClipConfig:
    """Size of a from-scratch CLIP, or the name and local file of a pretrained one."""

    embed_dim: int = 64  # D, the size of z_t and z_i
    image_size: int = 32
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    text_width: int = 128
    text_layers: int = 4
    head_width: int = 32
    context_length: int = 24  # Shapes captions are at most ~16 BPE tokens
    vocab: list[int] | None = None  # BPE ids the model knows; others map to one "unknown" id
    # std of the ViT's positional embedding at init. open_clip draws it with std width^-0.5
    # (0.09 at width 128): so small that a Shapes CLIP never learns where things are (left and
    # right images get z_i·z_i' = 1.000 and position probes sit at chance; both towers ignore
    # position together, a symmetric saddle). Unit std lets position in from the first step.
    vision_pos_std: float = 1.0
    # "vit": open_clip's ViT; "conv": `ConvTower`, 3x3 convolutions (for a from-scratch CLIP)
    vision: str = "vit"
    conv_widths: tuple[int, ...] = (32, 64, 128)  # channels per level of `ConvTower`
    pretrained: str | None = None  # an open_clip model name ("ViT-B-32") or model-config JSON
    checkpoint: str | None = None  # local weights file for `pretrained`
    # an open_clip model config ({"embed_dim", "vision_cfg", "text_cfg", …}) when `pretrained`
    # is the path of a model-config JSON rather than a name open_clip knows (its content)
    model_config: dict | None = None


class TextEncoding(NamedTuple):
    """The text encoder's outputs: z_t (B, D) unit-norm, token states (B, L, W), mask (B, L),
    and the token ids (B, L) they were read from (a decoder's own text encoder reads these)."""

    z_t: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor | None = None


def clip_dims(cfg: ClipConfig) -> tuple[int, int, int]:
    """(D, W, L) of a CLIP config: embedding size, text token width, context length."""
    if cfg.pretrained is None:
        return cfg.embed_dim, cfg.text_width, cfg.context_length
    model_cfg = open_clip_config(cfg)
    text = model_cfg["text_cfg"]
    return model_cfg["embed_dim"], text.get("width", 512), text.get("context_length", 77)


def clip_vocab_size(cfg: ClipConfig) -> int:
    """How many token ids a CLIP config's tokenizer gives (its text tower's vocabulary)."""
    if cfg.pretrained is None:
        return len(cfg.vocab) + 2 if cfg.vocab else 49408
    return open_clip_config(cfg)["text_cfg"].get("vocab_size", 49408)


def open_clip_config(cfg: ClipConfig) -> dict:
    """The open_clip model config of a pretrained CLIP: `cfg.model_config`, or open_clip's own
    for the name `cfg.pretrained`; ValueError naming the choices otherwise."""
    model_cfg = cfg.model_config or open_clip.get_model_config(str(cfg.pretrained))
    if model_cfg is None:
        raise ValueError(
            f"open_clip knows no model called {cfg.pretrained!r}: give one of "
            "open_clip.list_models() or the path of an open_clip model-config JSON"
        )
    return copy.deepcopy(model_cfg)


def pretrained_config(arch: str, checkpoint: str | Path, base: ClipConfig) -> ClipConfig:
    """`base` made the pretrained OpenCLIP `arch` (an open_clip model name, or the path of an
    open_clip model-config JSON, whose content is kept) with weights in the file `checkpoint`."""
    model_config = None
    if arch.endswith(".json") or Path(arch).is_file():
        try:
            data = json.loads(Path(arch).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the model config {arch}: {e}") from None
        model_config = data.get("model_cfg", data)  # a hub open_clip_config.json nests it
        if not isinstance(model_config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= (
            model_config.keys()
        ):
            raise ValueError(f"{arch} is not an open_clip model config (embed_dim, *_cfg)")
    cfg = dataclasses.replace(
        base, pretrained=arch, checkpoint=str(checkpoint), model_config=model_config
    )
    open_clip_config(cfg)  # a name open_clip does not know fails here
    return cfg


def open_clip_model(cfg: ClipConfig, weights: str | None) -> nn.Module:
    """open_clip's model of a pretrained CLIP config, with the weights file `weights` (None:
    random weights, for a checkpoint folder to be loaded into)."""
    if cfg.model_config is None:  # a name open_clip knows: its own factory
        return open_clip.create_model(
            str(cfg.pretrained), pretrained=weights, pretrained_text=False
        )
    # create_model takes only names in open_clip's registry; build as it does from the config
    model_cfg = open_clip_config(cfg)
    text = model_cfg["text_cfg"]
    custom = model_cfg.pop("custom_text", False) or "hf_model_name" in text
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False  # never downloaded; the weights file holds it
    model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**model_cfg)
    if weights is not None:
        open_clip.load_checkpoint(model, weights)  # strict, as create_model loads
    return model


def open_clip_tokenizer(cfg: ClipConfig) -> object:
    """The tokenizer of a pretrained CLIP config (open_clip's choice for a name it knows)."""
    if cfg.model_config is None:
        return open_clip.get_tokenizer(str(cfg.pretrained))
    text = cfg.model_config["text_cfg"]
    length = text.get("context_length", 77)
    if text.get("hf_tokenizer_name"):
        return open_clip.HFTokenizer(text["hf_tokenizer_name"], context_length=length)
    return open_clip.SimpleTokenizer(context_length=length, **text.get("tokenizer_kwargs", {}))


def bpe_vocabulary(words: Iterable[str]) -> list[int]:
    """The BPE ids of `words`, with start and end of text, sorted: the vocabulary a
    from-scratch CLIP embeds (about 50 rows for the Shapes grammar instead of 49,408: 6.3M
    parameters of a tiny model otherwise sit in rows no caption ever uses)."""
    tok = open_clip.SimpleTokenizer()
    ids = {tok.sot_token_id, tok.eot_token_id}
    for word in words:
        ids.update(tok.encode(word))
    return sorted(ids)


class ConvTower(nn.Module):
    """A convolutional image tower for a from-scratch CLIP: two 3x3 convolutions per level
    (GELU), halving the resolution between levels, then the whole last feature map flattened
    into one linear map to z_i (B, D).

    Not in the paper (its CLIP is a ViT-H/14). A Shapes CLIP with 64 patch tokens held shape
    in z_i only nonlinearly (a linear probe read it in 38% of scenes, 0% on held-out pairs);
    convolutions bring the locality prior shape needs, and the flattening keeps where things
    are (position is an attribute), which a global pool would throw away. No normalisation
    layers: GroupNorm's per-image statistics depend on the object's colour, and with them the
    probe read shape on held-out colour–shape pairs in 25% of scenes instead of 78%
    (results/bench/clip_probe.md).
    """

    def __init__(self, image_size: int, widths: tuple[int, ...], output_dim: int):
        super().__init__()
        self.image_size, self.output_dim = image_size, output_dim
        layers: list[nn.Module] = []
        cin, size = 3, image_size
        for level, width in enumerate(widths):
            for i in range(2):
                stride = 2 if level > 0 and i == 0 else 1
                layers += [nn.Conv2d(cin, width, 3, stride, 1), nn.GELU()]
                cin = width
            size //= 2 if level > 0 else 1
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin * size * size, output_dim)

    def forward(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, S, S) -> unnormalised image embeddings (B, D)."""
        return self.proj(self.features(images).flatten(1))


def multi_positive_loss(z_i: Tensor, z_t: Tensor, logit_scale: Tensor, positives: Tensor) -> Tensor:
    """CLIP's symmetric contrastive loss when a caption can be true of several images.

    z_i, z_t (B, D) unit-norm; positives (B, B) bool, [a, b] = caption a is true of image b
    (the diagonal holds). A caption's targets are all the images it is true of, equally; an
    image's own caption competes only with the captions that are false of it. With captions
    that leave attributes unstated ("a red shape"), the plain loss would push "a red shape"
    away from every other red object in the batch; this one does not.
    """
    logits = logit_scale * z_t @ z_i.T  # (B captions, B images)
    targets = positives.float() / positives.sum(1, keepdim=True)
    text_loss = -(targets * logits.log_softmax(1)).sum(1).mean()
    eye = torch.eye(len(z_i), dtype=torch.bool, device=z_i.device)
    image_logits = logits.T.masked_fill(positives.T & ~eye, float("-inf"))  # (B images, B caps)
    image_loss = F.cross_entropy(image_logits, torch.arange(len(z_i), device=z_i.device))
    return (text_loss + image_loss) / 2


class MissingCheckpointError(FileNotFoundError):
    """A pretrained CLIP was asked for but its local weights file is not there."""


class Clip(nn.Module):
    """open_clip's CLIP with unCLIP's interface; `forward(images, text)` is the training loss.

    A pretrained config reads its weights file unless `pretrained_weights` is False (random
    weights of that architecture, which a checkpoint folder is then loaded into).
    """

    def __init__(self, cfg: ClipConfig, pretrained_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        if cfg.pretrained is None:
            self.model = open_clip.CLIP(
                embed_dim=cfg.embed_dim,
                vision_cfg=open_clip.CLIPVisionCfg(
                    layers=cfg.vision_layers,
                    width=cfg.vision_width,
                    head_width=cfg.head_width,
                    patch_size=cfg.patch_size,
                    image_size=cfg.image_size,
                ),
                text_cfg=open_clip.CLIPTextCfg(
                    context_length=cfg.context_length,
                    vocab_size=len(cfg.vocab) + 2 if cfg.vocab else 49408,
                    width=cfg.text_width,
                    heads=cfg.text_width // cfg.head_width,
                    layers=cfg.text_layers,
                ),
            )
            self.tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)
            if cfg.vision == "conv":
                self.model.visual = ConvTower(cfg.image_size, cfg.conv_widths, cfg.embed_dim)
            elif cfg.vision == "vit":
                nn.init.normal_(self.model.visual.positional_embedding, std=cfg.vision_pos_std)
            else:
                raise ValueError(f"unknown vision tower {cfg.vision!r}; choose 'vit' or 'conv'")
        else:
            if pretrained_weights and (
                cfg.checkpoint is None or not Path(cfg.checkpoint).is_file()
            ):
                raise MissingCheckpointError(
                    f"pretrained CLIP {cfg.pretrained!r} needs its weights file, not found at "
                    f"{cfg.checkpoint!r}: OpenCLIP weights come from the open_clip model card "
                    "or the Hugging Face hub (open_clip_model.safetensors), downloaded on a "
                    "machine with internet; nothing is downloaded here"
                )
            weights = cfg.checkpoint if pretrained_weights else None
            try:
                self.model = open_clip_model(cfg, weights)
            except RuntimeError as e:  # load_state_dict's mismatch, many lines
                first = " ".join(str(e).strip().splitlines()[:2])[:300]
                raise ValueError(f"{weights} does not fit {cfg.pretrained}: {first}") from None
            self.tokenizer = open_clip_tokenizer(cfg)
        self.model.output_dict = False
        # BPE id -> compact id: 0 stays padding, 1 is "unknown", the vocabulary follows in
        # increasing order, so end-of-text keeps the largest id (open_clip pools at argmax).
        table = None
        if cfg.vocab:
            table = torch.ones(49408, dtype=torch.long)
            table[0] = 0
            table[torch.tensor(cfg.vocab)] = torch.arange(2, len(cfg.vocab) + 2)
        self.register_buffer("token_map", table, persistent=False)
        self.loss_fn = open_clip.ClipLoss()
        size = self.model.visual.image_size
        self.image_size = size[0] if isinstance(size, tuple | list) else size
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), False)

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.mean.device

    @property
    def embed_dim(self) -> int:
        """D, the size of z_t and z_i."""
        return self.model.visual.output_dim

    @property
    def text_width(self) -> int:
        """W, the width of the per-token text states."""
        return self.model.transformer.width

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Captions -> token ids (B, L), padded with 0, on the model's device."""
        ids = self.tokenizer(list(captions)).to(self.device)
        return ids if self.token_map is None else self.token_map[ids]

    def unknown_words(self, caption: str) -> list[str]:
        """Words of `caption` with a BPE token outside this CLIP's vocabulary."""
        if not self.cfg.vocab:
            return []
        known = set(self.cfg.vocab)
        return [w for w in caption.split() if not known.issuperset(self.tokenizer.encode(w))]

    def _image_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> resized, normalised input of the vision tower."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size, mode="bicubic", antialias=True)
        return (images.to(self.device) - self.mean) / self.std

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> z_i (B, D), unit-norm."""
        return F.normalize(self.model.encode_image(self._image_input(images)), dim=-1)

    def encode_text(self, text: list[str] | torch.Tensor) -> TextEncoding:
        """Captions (or token ids) -> z_t (B, D) unit-norm and token states (B, L, W)."""
        ids = self.tokenize(text) if isinstance(text, list | tuple) else text.to(self.device)
        m = self.model
        if hasattr(m, "text"):  # CustomTextCLIP keeps its text tower apart
            m.text.output_tokens = True
            z_t, states = m.text(ids)
        else:  # open_clip.CLIP.encode_text, keeping the states before pooling
            x = m.token_embedding(ids) + m.positional_embedding  # (B, L, W)
            states = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))  # (B, L, W)
            pooled = states[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)]
            z_t = pooled @ m.text_projection  # (B, D)
        return TextEncoding(F.normalize(z_t, dim=-1), states, ids != 0, ids)

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, positives: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The symmetric contrastive loss of CLIP (Radford et al. 2021, Fig. 3); with
        `positives` (B, B) its `multi_positive_loss` over the local batch."""
        z_i = self.encode_image(images)
        z_t = self.encode_text(text).z_t
        if positives is not None:
            return multi_positive_loss(z_i, z_t, self.model.logit_scale.exp(), positives)
        if dist.is_initialized() and self.loss_fn.world_size != dist.get_world_size():
            # under DDP every rank contrasts its batch against the gathered global batch
            self.loss_fn = open_clip.ClipLoss(
                local_loss=True,
                gather_with_grad=True,
                rank=dist.get_rank(),
                world_size=dist.get_world_size(),
            )
        return self.loss_fn(z_i, z_t, self.model.logit_scale.exp())
