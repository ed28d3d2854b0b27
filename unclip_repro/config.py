"""Presets: one dataclass config per component, composed here (nanoGPT's GPTConfig style).

| preset         | data          | CLIP                        | where                       |
|----------------|---------------|-----------------------------|-----------------------------|
| `shapes-smoke` | Shapes world  | tiny, from scratch          | seconds: tests and CI       |
| `shapes`       | Shapes world  | small, from scratch         | minutes on 2 CPU cores      |
| `coco-smoke`   | real pairs    | tiny open_clip, local file  | seconds: tests of real data |
| `coco-gpu`     | real pairs    | ViT-B-32, local file        | one GPU, hours: 64 → 256 px |
| `paper`        | real pairs    | ViT-H-14, local file        | Table 3 sizes               |

A real-data preset (`dataset="coco"`) trains on COCO, a table of pairs or WebDataset shards
(`data/captions.py`, given at the command line): its `clip` stage imports a pretrained
OpenCLIP from a local file (`--clip-model ARCH --clip-checkpoint FILE`), never trains one.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ar_prior import ARPriorConfig
from .clip import ClipConfig, bpe_vocabulary
from .data import shapes
from .decoder import DecoderConfig
from .errors import UserError
from .prior import PriorConfig
from .unet import UNetConfig
from .upsampler import UpsamplerConfig


@dataclass
class DataConfig:
    """Where training pairs come from and at what base resolution."""

    dataset: str = "shapes"  # "shapes", or "coco": real pairs given at the command line
    resolution: int = 32  # the decoder's base resolution
    pool_size: int = 32_768  # scenes encoded once by the frozen CLIP for the priors
    seed: int = 0  # of the embedding pool
    # §5.2: each attribute of a training caption is left unstated with this probability
    # ("a shape on the left", "a red circle"), so one caption stands for many images
    unstated: float = 0.0
    # the same for the CLIP's training captions: partial captions, scored against every image
    # they are true of (`clip.multi_positive_loss`), make the CLIP tell each attribute apart
    clip_unstated: float = 0.0
    # the share of two-object scenes in the decoder's and GLIDE's Shapes batches
    two_objects: float = 0.5


@dataclass
class TrainConfig:
    """Optimiser and loop settings of one training stage (Table 3 of unCLIP for the paper)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: int = 100  # linear warm-up steps
    # after warm-up: "constant", or "cosine" decay to zero at `steps` (a pure function of the
    # step either way, so a resumed run equals an unbroken one)
    schedule: str = "constant"
    # the last `cooldown` steps: the rate falls linearly to zero (on top of either schedule); a
    # constant-rate run extended by a cooldown reproduces the run it extends up to its start
    cooldown: int = 0
    # `train_all`: start from the trained weights of this stage (its run in the same folder),
    # which then trains first; the Shapes decoder starts from GLIDE (`Decoder.load_glide`)
    init: str | None = None
    grad_clip: float = 1.0
    # (prefix, factor): parameters whose names start with prefix train at factor × lr, e.g.
    # (("text_encoder.", 0.05),): a pretrained text tower fine-tuned gently beside a U-Net
    lr_scales: tuple[tuple[str, float], ...] = ()
    ema_decay: float = 0.999  # with the usual (1 + n) / (10 + n) warm-up of the decay
    # post-hoc EMA (EDM2, `posthoc_ema`): every this many steps, a snapshot of two
    # power-function EMAs of widths `ema_sigma_rels` goes to RUN/ema/, from which the EMA of
    # any width is built after training (0: off; not under FSDP)
    ema_snapshot_every: int = 0
    ema_sigma_rels: tuple[float, ...] = (0.05, 0.10)
    checkpoint_every: int = 250
    seed: int = 0
    # under torchrun: shard parameters, gradients and optimiser state over the ranks with FSDP
    # (`fully_shard` per U-Net / Transformer block, then the root) instead of replicating the
    # model with DDP; checkpoints hold the same whole weights either way (one process: ignored)
    fsdp: bool = False
    # micro-batches of `batch_size` whose gradients one optimiser step averages: the step's
    # batch is accumulate × batch_size per rank (DDP and FSDP reduce over ranks once a step)
    accumulate: int = 1
    # on the CPU: forward and loss under bfloat16 autocast (`torch.autocast("cpu")`; weights,
    # gradients and optimiser state stay float32). Off by default: the numbers change
    # (bench/speed.py measures the gain; a GPU always trains under bf16 autocast)
    cpu_bf16: bool = False


def shapes_vocab() -> list[int]:
    """The BPE ids a Shapes CLIP knows: every word of the grammar, and its punctuation."""
    return bpe_vocabulary((*shapes.VOCABULARY, ",", "."))


# Table 3's AdamW settings of the decoder and upsamplers (the priors have their own)
TABLE3_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "ema_decay": 0.9999}


def bsr_upsampler(
    unet: UNetConfig, low: int, high: int, crop: int, sample_steps: int = 15
) -> UpsamplerConfig:
    """The second upsampler of Table 3: BSR degradation, linear schedule, 15 DDIM steps."""
    return UpsamplerConfig(
        unet=unet,
        low=low,
        high=high,
        degradation="bsr",
        schedule="linear",
        sample_steps=sample_steps,
        crop=crop,
    )


@dataclass
class Preset:
    """A whole configuration: data, CLIP, and the training settings of each stage."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    prior_diffusion: PriorConfig = field(default_factory=PriorConfig)
    prior_ar: ARPriorConfig = field(default_factory=ARPriorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    upsampler1: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    upsampler2: UpsamplerConfig = field(
        default_factory=lambda: bsr_upsampler(UpsamplerConfig().unet, 64, 128, 32)
    )
    train: dict[str, TrainConfig] = field(default_factory=dict)
    # what training every stage at its `train` steps takes on 2 CPU cores, in minutes: what
    # `train-all --budget` scales the steps by (None: a preset not meant for the CPU)
    budget_minutes: float | None = None
    # the `--set` changes this preset carries, already applied: a record for the checkpoint
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole preset."""
        return dataclasses.asdict(self)


def _build(cls: type, data: Any) -> Any:
    """Rebuild a (nested) dataclass from `dataclasses.asdict` output."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{k: _build(hints[k], v) for k, v in data.items() if k in hints})
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin is dict and dataclasses.is_dataclass(args[1]):
        return {k: _build(args[1], v) for k, v in data.items()}
    if origin is tuple:
        return tuple(data)
    return data


def preset_from_dict(data: dict[str, Any]) -> Preset:
    """The inverse of `Preset.to_dict`."""
    return _build(Preset, data)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` -> (KEY, VALUE): VALUE read as a TOML value (`4`, `1e-3`, `true`, `[1, 2]`,
    `"text"`), else taken as a bare string (`decoder.prediction=v`)."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise UserError(f"--set takes KEY=VALUE (e.g. decoder.guidance=4), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def read_overrides(path: str | Path) -> dict[str, Any]:
    """An override file: TOML whose tables are preset paths (`[train.glide]` / `seed = 1`),
    flattened to dotted keys."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no such override file: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"{path} is not a TOML override file: {e}") from None
    return flatten(data)


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v}
    return out


def coerce(key: str, value: Any, current: Any) -> Any:
    """`value` as the type of the field's `current` value; UserError if it cannot be."""
    if current is None or value is None:
        return value
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, float) and type(value) is int:
        return float(value)
    if type(value) is not type(current):
        kind = type(current).__name__
        raise UserError(f"{key} takes a {kind} (now {current!r}), got {value!r}")
    return value


def _set(node: Any, path: list[str], value: Any, key: str) -> Any:
    """A copy of `node` (dataclass or dict) with the field at `path` set to `value`."""
    name, rest = path[0], path[1:]
    if dataclasses.is_dataclass(node):
        names = [f.name for f in dataclasses.fields(node)]
        current = getattr(node, name, None) if name in names else None
    else:
        names = list(node)
        current = node.get(name)
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(near)}?" if near else f"choose one of: {', '.join(names)}"
        raise UserError(f"unknown setting {key!r}: no {name!r} there; {hint}")
    if rest:
        if not (dataclasses.is_dataclass(current) or isinstance(current, dict)):
            raise UserError(f"unknown setting {key!r}: {name!r} has no fields")
        new = _set(current, rest, value, key)
    else:
        if dataclasses.is_dataclass(current) or isinstance(current, dict):
            raise UserError(f"{key} is a group of settings; set one of its fields")
        new = coerce(key, value, current)
    if dataclasses.is_dataclass(node):
        return dataclasses.replace(node, **{name: new})
    return node | {name: new}


def override(
    preset: Preset, changes: Mapping[str, Any] | Iterable[str], stage: str | None = None
) -> Preset:
    """A copy of `preset` with each dotted setting changed and recorded in `preset.overrides`:
    `{"decoder.guidance": 4, "train.glide.seed": 1}`, or `["decoder.guidance=4", ...]` as
    `--set` gives them. With `stage`, `train.FIELD` means `train.<stage>.FIELD`."""
    if not isinstance(changes, Mapping):
        changes = dict(parse_assignment(c) for c in changes)
    for key, value in changes.items():
        path = key.split(".")
        if stage and path[0] == "train" and len(path) == 2 and path[1] not in preset.train:
            path.insert(1, stage)
        if path[0] in ("name", "overrides"):
            raise UserError(f"{key!r} cannot be set; choose another --preset")
        preset = _set(preset, path, value, key)
        node = preset
        for name in path:  # the value as set (a float field's `4` is 4.0)
            node = node[name] if isinstance(node, dict) else getattr(node, name)
        preset.overrides = {**preset.overrides, ".".join(path): node}
    return preset


def _smoke() -> Preset:
    clip = ClipConfig(
        embed_dim=32,
        vision="conv",
        conv_widths=(8, 16, 32),
        text_width=64,
        text_layers=2,
        vocab=shapes_vocab(),
    )
    small = {"width": 32, "layers": 1, "heads": 2}
    train = {
        "clip": TrainConfig(
            steps=30, batch_size=16, warmup=5, schedule="cosine", checkpoint_every=10
        ),
        "prior-diffusion": TrainConfig(steps=20, batch_size=32, warmup=5, checkpoint_every=10),
        "prior-ar": TrainConfig(steps=20, batch_size=32, warmup=5, checkpoint_every=10),
        "decoder": TrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=5, init="glide"),
        "glide": TrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=5),
        "upsampler1": TrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=5),
        "upsampler2": TrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=5),
    }
    up = UNetConfig(in_channels=6, channels=16, channel_mult=(1, 2), attention_resolutions=())
    unet = UNetConfig(
        channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,), coords=True
    )
    return Preset(
        "shapes-smoke",
        data=DataConfig(pool_size=512, clip_unstated=0.45),
        clip=clip,
        prior_diffusion=PriorConfig(**small, sample_steps=8),
        prior_ar=ARPriorConfig(**small, buckets=64),
        decoder=DecoderConfig(unet=unet, sample_steps=8, prediction="v"),
        upsampler1=UpsamplerConfig(unet=up, sample_steps=4, prediction="x0", residual=True),
        upsampler2=bsr_upsampler(up, 64, 128, 32, sample_steps=4),
        train=train,
    )


def _shapes() -> Preset:
    # a convolutional image tower: a ViT's z_i held shape only nonlinearly (docs/history.md)
    clip = ClipConfig(
        embed_dim=64,
        vision="conv",
        conv_widths=(32, 64, 128),
        text_width=128,
        text_layers=4,
        vocab=shapes_vocab(),
    )
    clip_train = {"lr": 1e-3, "weight_decay": 0.0, "warmup": 50, "schedule": "cosine"}
    train = {
        "clip": TrainConfig(steps=1700, batch_size=64, **clip_train),
        "prior-diffusion": TrainConfig(steps=700, batch_size=128, lr=5e-4, warmup=50),
        "prior-ar": TrainConfig(steps=500, batch_size=128, lr=1e-3, warmup=50),
        # from GLIDE's weights, learning z_i as the rate falls to zero: it draws shapes better
        # than 14,000 steps from scratch (docs/history.md, "What limits it")
        "decoder": TrainConfig(
            steps=1500, batch_size=32, lr=2e-3, warmup=50, cooldown=1500, init="glide"
        ),
        "glide": TrainConfig(steps=12_500, batch_size=32, lr=2e-3, warmup=50),
        "upsampler1": TrainConfig(steps=2000, batch_size=64, lr=5e-4, warmup=30),
        "upsampler2": TrainConfig(steps=1200, batch_size=32, lr=5e-4, warmup=30),
    }
    size = {"width": 128, "layers": 4, "heads": 4}
    # narrow at 32 px, wide at 8 px, where layout and shape are decided: 4x fewer FLOPs than
    # a 32-channel U-Net
    unet = UNetConfig(
        channels=16,
        channel_mult=(1, 2, 4),
        num_res_blocks=1,
        attention_resolutions=(16, 8),
        groups=8,
        coords=True,
    )
    # x0-prediction of the residual over the upsampled input: clean edges in a few hundred
    # steps where ε and v leave grain (notebook 06)
    up = UNetConfig(in_channels=6, channels=16, channel_mult=(1, 2, 2), attention_resolutions=())
    # half the inputs left clean: trained on corrupted ones alone, the upsamplers sharpened
    # clean inputs into dark rims (docs/history.md, "Upsamplers: half the inputs left clean")
    residual = {"prediction": "x0", "residual": True, "corrupt_p": 0.5}
    return Preset(
        "shapes",
        # a third of single-object captions leave something out; CLIP's most of them
        data=DataConfig(unstated=0.1, clip_unstated=0.45),
        clip=clip,
        prior_diffusion=PriorConfig(**size),
        prior_ar=ARPriorConfig(**size),
        # stochastic DDIM (η = 1) over 50 steps draws more captions right than η = 0 over 25
        # (docs/history.md, "What limits it": sampling)
        decoder=DecoderConfig(unet=unet, sample_steps=50, eta=1.0, guidance=3.0, prediction="v"),
        upsampler1=UpsamplerConfig(unet=up, crop=16, **residual),
        upsampler2=dataclasses.replace(bsr_upsampler(up, 64, 128, 32), **residual),
        train=train,
        # the measured `make train` of this recipe (docs/history.md): what --budget scales
        budget_minutes=172,
    )


def _coco_smoke() -> Preset:
    """The real-data path in seconds (tests and CI): the smoke sizes at 32 → 64 → 128 px,
    on a tiny open_clip model the caller imports (`--clip-model tiny.json`)."""
    smoke = _smoke()
    return dataclasses.replace(
        smoke,
        name="coco-smoke",
        data=DataConfig(dataset="coco", resolution=32),
        clip=ClipConfig(),  # replaced by the imported CLIP's config
        train={k: dataclasses.replace(v, batch_size=4) for k, v in smoke.train.items()},
    )


def _coco_gpu() -> Preset:
    """COCO train2014 (≈ 83k images, 414k captions) on one H100/H200-class GPU in hours, on a
    pretrained ViT-B-32 read from a local file: a 64 px decoder and one 64 → 256 upsampler
    (COCO's images are about 640 px: no 1024 px stage trains; `upsampler2` is sized only).

    Parameters (`python -m unclip_repro params --preset coco-gpu`, meta device): diffusion prior
    87.8 M, AR prior 87.8 M, decoder 297.5 M with its 75.8 M text encoder (the GLIDE baseline,
    without the z_i paths: 296.0 M), upsampler 64 → 256 82.8 M (the unused 256 → 1024: 28.1 M).

    Wall time, an ESTIMATE until `bench/gpu_check.py` measures it: FLOPs per training sample
    (forward + backward, counted with FlopCounterMode on the CPU) at an assumed 40% of a 989
    TFLOP/s bf16 peak. Diffusion prior 41 GFLOP → ≈ 0.05 s a step, 30k steps ≈ 0.5 h; AR prior
    ≤ 298 GFLOP (PCA keeping all 512 dimensions; fewer on real embeddings) → ≤ 0.19 s, ≤ 1.6 h;
    decoder 458 GFLOP before its text encoder (≈ 6 × 76 M parameters × 77 tokens ≈ 35 more)
    → ≈ 0.15 s (≈ 870 images/s), 60k steps ≈ 2.4 h, GLIDE the same;
    upsampler 173 GFLOP → ≈ 0.03 s, 50k steps ≈ 0.4 h if the loader keeps up (2,300 images/s
    of 256 px). The stack: about 7-8 h on one H100/H200.
    """
    clip = ClipConfig(pretrained="ViT-B-32", checkpoint="weights/open_clip_vit_b_32.safetensors")
    prior = {"width": 768, "layers": 12, "heads": 12}
    decoder = UNetConfig(
        channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
        attention_resolutions=(32, 16, 8), head_channels=64, dropout=0.1, groups=32,
    )  # fmt: skip
    up1 = UNetConfig(
        in_channels=6, channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
        attention_resolutions=(), dropout=0.1, groups=32,
    )  # fmt: skip
    up2 = UNetConfig(
        in_channels=6, channels=64, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(), groups=32,
    )  # fmt: skip
    # Table 3's optimiser settings per stage, at batches that fit one GPU with bf16 autocast;
    # learning rates raised from the paper's (batch 2048-4096) for the smaller batches
    every = {"warmup": 1000, "schedule": "cosine", "checkpoint_every": 2500}
    train = {
        "prior-diffusion": TrainConfig(
            steps=30_000, batch_size=512, lr=2e-4, weight_decay=6e-2, betas=(0.9, 0.96),
            eps=1e-6, ema_decay=0.9999, **every,
        ),
        "prior-ar": TrainConfig(
            steps=30_000, batch_size=256, lr=2e-4, weight_decay=4e-2, betas=(0.9, 0.91),
            eps=1e-10, ema_decay=0.999, **every,
        ),
        # 60k steps of 128: ≈ 92 epochs of 83k images, each with one of its 5 captions
        "decoder": TrainConfig(steps=60_000, batch_size=128, lr=1e-4, **TABLE3_ADAM, **every),
        "glide": TrainConfig(steps=60_000, batch_size=128, lr=1e-4, **TABLE3_ADAM, **every),
        # random 64 px crops of 256 px images (the paper's quarter-size crops)
        "upsampler1": TrainConfig(steps=50_000, batch_size=64, lr=1e-4, **TABLE3_ADAM, **every),
    }  # fmt: skip
    return Preset(
        "coco-gpu",
        data=DataConfig(dataset="coco", resolution=64),
        clip=clip,
        prior_diffusion=PriorConfig(**prior),
        prior_ar=ARPriorConfig(**prior),
        # the text encoder of GLIDE's released (filtered) model: width 512, 16 layers
        decoder=DecoderConfig(
            unet=decoder,
            sample_steps=100,
            guidance=3.0,
            text_layers=16,
            text_width=512,
            text_heads=8,
        ),  # fmt: skip
        upsampler1=UpsamplerConfig(unet=up1, low=64, high=256, crop=64, sample_steps=27),
        upsampler2=bsr_upsampler(up2, 256, 1024, 256),
        train=train,
    )


def _paper() -> Preset:
    """Table 3 of unCLIP. The decoder trains GLIDE's text encoder (width 2048, 24 layers, 32
    heads); the paper's priors have one too, ours read the frozen CLIP's token states."""
    clip = ClipConfig(pretrained="ViT-H-14", checkpoint="weights/open_clip_vit_h_14.safetensors")
    up1 = UNetConfig(
        in_channels=6, channels=320, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_resolutions=(), dropout=0.1, groups=32,
    )  # fmt: skip
    up2 = UNetConfig(
        in_channels=6, channels=192, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(), groups=32,
    )  # fmt: skip
    decoder = UNetConfig(
        channels=512, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_resolutions=(32, 16, 8), head_channels=64, dropout=0.1, groups=32,
    )  # fmt: skip
    # Table 3's optimiser settings. batch_size is per process: Table 3's global batch over 64
    # GPUs. Priors and decoder are sharded with FSDP under torchrun (1B-3.5B parameters)
    sharded = {"fsdp": True, "warmup": 10_000, "grad_clip": 1.0, "checkpoint_every": 5000}
    train = {
        "prior-ar": TrainConfig(
            steps=1_000_000, batch_size=64, lr=1.6e-4, weight_decay=4e-2, betas=(0.9, 0.91),
            eps=1e-10, ema_decay=0.999, **sharded,
        ),
        "prior-diffusion": TrainConfig(
            steps=600_000, batch_size=64, lr=1.1e-4, weight_decay=6e-2, betas=(0.9, 0.96),
            eps=1e-6, ema_decay=0.9999, **sharded,
        ),
        "decoder": TrainConfig(steps=800_000, batch_size=32, lr=1.2e-4, **TABLE3_ADAM, **sharded),
        "glide": TrainConfig(steps=800_000, batch_size=32, lr=1.2e-4, **TABLE3_ADAM, **sharded),
        "upsampler1": TrainConfig(steps=1_000_000, batch_size=16, lr=1.2e-4, **TABLE3_ADAM),
        "upsampler2": TrainConfig(steps=1_000_000, batch_size=8, lr=1.0e-4, **TABLE3_ADAM),
    }  # fmt: skip
    return Preset(
        "paper",
        data=DataConfig(dataset="coco", resolution=64),
        clip=clip,
        prior_diffusion=PriorConfig(width=2048, layers=24, heads=32),
        prior_ar=ARPriorConfig(width=1664, layers=24, heads=26),
        decoder=DecoderConfig(
            unet=decoder, sample_steps=250, text_layers=24, text_width=2048, text_heads=32
        ),
        upsampler1=UpsamplerConfig(unet=up1, low=64, high=256, crop=64),
        upsampler2=bsr_upsampler(up2, 256, 1024, 256),
        train=train,
    )


PAPER_PARAMETERS = {  # Table 3 of unCLIP
    "prior-ar": 1.0e9,
    "prior-diffusion": 1.0e9,
    "decoder": 3.5e9,
    "upsampler1": 700e6,
    "upsampler2": 300e6,
}


PRESETS = {p().name: p for p in (_smoke, _shapes, _coco_smoke, _coco_gpu, _paper)}


def get_preset(name: str) -> Preset:
    """A fresh copy of the preset called `name`; ValueError naming the choices otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
