"""Speed side by side with the peers, in one run on one machine: writes OUT/bench.md and .csv.

    python bench/speed.py                              # results/bench.md, results/bench.csv
    python bench/speed.py --quick --out /tmp/bench     # small sizes, few repeats, < 1 min
    python bench/speed.py --skip compile pipeline      # sections: see --help

Sections: the fp32 matmul peak (2048², the yardstick of every "% of peak"); the decoder's
U-Net against diffusers' UNet2DConditionModel with the same layers (training step: forward,
backward, AdamW; sampling step: forward, no grad), at the Shapes size and a larger one, with
each speed-up before and after (bf16 autocast, torch.compile; issue 35's channels-last feature
maps and fused attention, against contiguous maps and the math kernel the old channel-major q,
k, v fell back to); the diffusion prior
against diffusers' PriorTransformer and DALLE2-pytorch's DiffusionPriorNetwork; the whole
pipeline's sampling per stage (`UnCLIP.load("shapes")`); the FLOPs of every training stage of
the Shapes preset (FlopCounterMode) and the top operators of the decoder's training step
(torch.profiler). Every time is the median of --repeats after warm-up; ratios are ours ÷ peer
in steps per second (> 1: ours is faster), which survive the machine's day-to-day drift better
than the times themselves. Peers not installed: their rows say so (`pip install -e ".[bench]"`
brings them, bench/README of pyproject's `bench` group).
The fused-AdamW rows and the `compile_denoiser()` section left with those features after
385c659 (`git checkout 385c659` reruns them); results/bench.md keeps them until the next run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import speed_peers as peers  # noqa: E402

from unclip_repro import checkpoint, unet  # noqa: E402
from unclip_repro.components import STAGES, load_component  # noqa: E402
from unclip_repro.config import get_preset  # noqa: E402
from unclip_repro.data import shapes  # noqa: E402
from unclip_repro.pipeline import UnCLIP  # noqa: E402
from unclip_repro.prior import DiffusionPrior, PriorConfig  # noqa: E402
from unclip_repro.unet import UNet, UNetConfig  # noqa: E402

KINDS = ("train step", "sampling step")
SECTIONS = ("decoder", "prior", "pipeline", "flops", "profile", "compile")
Row = dict[str, object]


# --- measuring -------------------------------------------------------------------------------
def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return sdpa_backward_flop_count(grad, q, k, v)


def sdpa_counted() -> bool:
    """Whether FlopCounterMode counts the fused CPU attention kernel by itself."""
    q = torch.randn(1, 1, 16, 8, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    return counter.get_total_flops() > 0


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the fused CPU attention (4·B·h·N·M·d forward, twice
    that and more backward: torch's own `sdpa_flop_count` formulas) when it misses it."""
    ops = torch.ops.aten
    mapping = {}
    if not SDPA_COUNTED:
        mapping = {
            ops._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
            ops._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
        }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of fn (matmuls, convolutions, attention)."""
    with flop_counter() as counter:
        fn()
    return float(counter.get_total_flops())


def train_step(model: nn.Module, loss: Callable[[], Tensor], bf16: bool = False):  # noqa: ANN201
    """One training step: forward and loss (under bf16 autocast if asked), backward, AdamW
    (PyTorch's default for CPU tensors, as `train.adamw` builds it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step


def sample_step(fn: Callable[[], Tensor], bf16: bool = False):  # noqa: ANN201
    """One sampling step: a forward pass without gradients."""

    @torch.no_grad()
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fn()

    return step


class Bench:
    """Options, the rows measured so far, and the matmul peak they are compared with."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.rows, self.peak = args, [], float("nan")
        self.repeats, self.warmup = args.repeats, 1 if args.quick else 2
        self.compile = "compile" not in args.skip and not args.quick

    def time(self, fn: Callable[[], object], flops: float | None = None, **row: object) -> Row:
        """Time fn (and count its FLOPs once, unless given) into a row of `section`."""
        seconds = median_seconds(fn, self.repeats, self.warmup)
        if flops is None:
            flops = count_flops(fn)
        row |= {"median_s": seconds, "gflop": flops / 1e9, "gflop_s": flops / 1e9 / seconds}
        row["pct_peak"] = 100 * row["gflop_s"] / self.peak
        self.rows.append(row)
        return row

    def missing(self, why: str, **row: object) -> None:
        """A row of a peer that could not run."""
        self.rows.append(row | {"note": why})


# --- sections --------------------------------------------------------------------------------
def matmul_peak(bench: Bench) -> str:
    """fp32 matmul GFLOP/s at 2048² (512² with --quick)."""
    n = 512 if bench.args.quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = median_seconds(lambda: a @ b, max(bench.repeats, 5), 2)
    bench.peak = 2 * n**3 / seconds / 1e9
    bench.rows.append(
        {"section": "peak", "model": f"matmul {n}²", "impl": "torch", "variant": "fp32",
         "median_s": seconds, "gflop": 2 * n**3 / 1e9, "gflop_s": bench.peak, "pct_peak": 100.0}
    )  # fmt: skip
    return f"fp32 matmul {n}×{n}: **{bench.peak:.1f} GFLOP/s** (median of {bench.repeats})."


def _unet_sizes(quick: bool) -> dict[str, tuple[UNetConfig, int, int]]:
    """name -> (U-Net config, resolution, batch): the Shapes decoder's, and a larger one."""
    cfg = dataclasses.replace(get_preset("shapes").decoder.unet, context_dim=128)
    large = dataclasses.replace(cfg, channels=64, attention_resolutions=(32, 16), groups=32)
    if quick:  # smoke sizes: the same code paths in seconds
        small = dataclasses.replace(large, channels=32, attention_resolutions=(16, 8))
        return {"shapes (32 px, 16 ch)": (cfg, 32, 4), "larger (32 px, 32 ch)": (small, 32, 2)}
    return {"shapes (32 px, 16 ch)": (cfg, 32, 32), "large (64 px, 64 ch)": (large, 64, 8)}


def _unet_steps(call: Callable, model: nn.Module, inputs: tuple, bf16: bool):  # noqa: ANN202
    """(train step, sampling step) of a U-Net called as call(x, t, emb, context) on `inputs`
    (x, t, emb, context, target), its optimiser over `model`'s parameters."""
    x, t, emb, context, target = inputs

    def loss() -> Tensor:
        return F.mse_loss(call(x, t, emb, context), target)

    sample = sample_step(lambda: call(x, t, emb, context), bf16)
    return train_step(model, loss, bf16), sample


# variant -> bf16 autocast, for ours and the peer alike (fused AdamW: 385c659's results/bench.md)
PEER_VARIANTS = {"eager": False, "cpu bf16 autocast": True}


def _decoder_size(bench: Bench, size: str, cfg: UNetConfig, R: int, B: int) -> str:
    """The rows of one size: ours with every variant, diffusers with PEER_VARIANTS."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, cfg.in_channels, R, R, generator=g)
    rest = (
        torch.randint(0, 1000, (B,), generator=g),  # t
        torch.randn(B, 4 * cfg.channels, generator=g),  # emb
        torch.randn(B, 28, cfg.context_dim, generator=g),  # context: 24 caption + 4 z_i tokens
        torch.randn(B, cfg.out_channels, R, R, generator=g),  # target
    )
    torch.manual_seed(0)
    ours = UNet(cfg, R)
    params = peers.count_parameters(ours)
    base = {"section": "decoder", "size": size, "batch": B, "params": params}
    variants = {v: _unet_steps(ours, ours, (x, *rest), bf16) for v, bf16 in PEER_VARIANTS.items()}

    def before(*inputs: Tensor, math: bool = True) -> Tensor:  # issue 35's "before" rows
        unet.MEMORY_FORMAT = torch.contiguous_format  # the feature maps' old layout
        try:
            if not math:
                return ours(*inputs)
            with sdpa_kernel(SDPBackend.MATH):  # what the old channel-major q, k, v fell to
                return ours(*inputs)
        finally:
            unet.MEMORY_FORMAT = torch.channels_last

    variants["contiguous feature maps"] = _unet_steps(
        lambda *a: before(*a, math=False), ours, (x, *rest), False
    )
    variants["before 35: math attention, contiguous maps"] = _unet_steps(
        before, ours, (x, *rest), False
    )
    if bench.compile:
        compiled = torch.compile(UNet(cfg, R))
        variants["torch.compile"] = _unet_steps(compiled, compiled, (x, *rest), False)
    flops = {kind: count_flops(variants["eager"][i]) for i, kind in enumerate(KINDS)}
    for variant, fns in variants.items():
        for kind, fn in zip(KINDS, fns, strict=True):
            first = ""
            if variant == "torch.compile":
                t0 = time.perf_counter()
                fn()
                first = f"first call (compiling) {time.perf_counter() - t0:.0f} s"
            row = bench.time(fn, flops[kind], **base, model=kind, impl="ours", variant=variant)
            row["note"] = first
    ok, why = peers.available("diffusers")
    if not ok:
        for kind in KINDS:
            bench.missing(f"diffusers {why}", **base, model=kind, impl="diffusers")
        return f"{size}: ours {params:,} parameters, diffusers {why}"
    torch.manual_seed(0)
    theirs = peers.diffusers_unet(cfg, R)
    call = peers.diffusers_unet_call(theirs)
    inputs = (peers.coords(x) if cfg.coords else x, *rest)
    n = base["params"] = peers.count_parameters(theirs)
    flops = {}  # counted once per kind: the variants do the same arithmetic
    for variant, bf16 in PEER_VARIANTS.items():
        for kind, fn in zip(KINDS, _unet_steps(call, theirs, inputs, bf16), strict=True):
            flops.setdefault(kind, count_flops(fn))
            bench.time(fn, flops[kind], **base, model=kind, impl="diffusers", variant=variant)
    return f"{size}: ours {params:,} parameters, diffusers {n:,} ({n / params - 1:+.1%})"


def decoder_unet(bench: Bench) -> str:
    """Our U-Net against diffusers' at each size; each speed-up as a variant of ours."""
    sizes = _unet_sizes(bench.args.quick).items()
    return "\n".join(f"- {_decoder_size(bench, size, *spec)}" for size, spec in sizes)


def prior(bench: Bench) -> str:
    """Our diffusion prior's denoiser against the peers' at the Shapes prior's size."""
    size = get_preset("shapes").prior_diffusion
    W, layers, heads, L = size.width, size.layers, size.heads, 24
    B = 8 if bench.args.quick else 128
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (B,), generator=g)
    tokens, mask = torch.randn(B, L, W, generator=g), torch.ones(B, L, dtype=torch.bool)
    torch.manual_seed(0)
    ours = DiffusionPrior(PriorConfig(width=W, layers=layers, heads=heads), 64, W, L)
    x64, z64, drop = torch.randn(B, 64, generator=g), torch.randn(B, 64, generator=g), t < 0
    xw, zw = torch.randn(B, W, generator=g), torch.randn(B, W, generator=g)
    models = [("ours", lambda: (ours, lambda: ours.denoise(x64, t, tokens, mask, z64, drop), 64))]
    for name, build, caller in (
        ("diffusers", peers.diffusers_prior, peers.diffusers_prior_call),
        ("dalle2-pytorch", peers.dalle2_prior, peers.dalle2_prior_call),
    ):

        def make(build=build, caller=caller):  # noqa: ANN001, ANN202
            model = build(W, layers, heads, L)
            call = caller(model)
            return model, lambda: call(xw, t, tokens, mask, zw), W

        models.append((name, make))
    notes = []
    for name, make in models:
        base = {"section": "prior", "size": f"width {W}, {layers} layers, {heads} heads, "
                f"{L}+4 tokens", "batch": B, "impl": name}  # fmt: skip
        ok, why = (True, "") if name == "ours" else peers.available(name)
        if not ok:
            for kind in ("train step", "sampling step"):
                bench.missing(f"{name} {why}", **base, model=kind)
            continue
        torch.manual_seed(0)
        model, fn, D = make()
        base["params"] = peers.count_parameters(model)
        notes.append(f"{name}: {base['params']:,} parameters")
        target = torch.randn(B, D, generator=g)
        model.train()
        bench.time(train_step(model, lambda fn=fn, target=target: F.mse_loss(fn(), target)),
                   **base, model="train step", variant="eager")  # fmt: skip
        # FLOPs in train mode: in eval, torch's TransformerEncoderLayer takes a fused fast
        # path FlopCounterMode does not see (no dropout here: the same arithmetic)
        flops = count_flops(sample_step(fn))
        model.eval()
        bench.time(sample_step(fn), flops, **base, model="sampling step", variant="eager")
    return "; ".join(notes)


def pipeline(bench: Bench) -> str:
    """Seconds and images per second of each stage of `UnCLIP.load("shapes").generate`."""
    model = UnCLIP.load("shapes")
    N = 2 if bench.args.quick else 16
    captions = shapes.sample_batch(np.random.default_rng(0), N, 32)[1]
    state: dict = {}

    def stage_fns() -> list[tuple[str, Callable[[], object]]]:
        def text() -> None:
            state["gen"] = torch.Generator().manual_seed(0)
            state["text"] = model.encode_text(captions)

        def prior() -> None:
            state["z_i"] = model.priors["diffusion"].sample(state["text"], generator=state["gen"])

        def decoder() -> None:
            state["img"] = model.decoder.sample(state["text"], state["z_i"], generator=state["gen"])

        fns = [("CLIP text encoder", text), ("diffusion prior", prior), ("decoder", decoder)]
        for i, up in enumerate(model.upsamplers, start=1):

            def upsample(up=up, i=i) -> None:
                state[f"up{i}"] = up.sample(state["up" + str(i - 1) if i > 1 else "img"],
                                            generator=state["gen"])  # fmt: skip

            fns.append((f"upsampler{i} ({up.cfg.low}→{up.cfg.high})", upsample))
        return fns

    fns = stage_fns()
    repeats = max(1, min(bench.repeats, 3))
    times = {name: [] for name, _ in fns}
    for _ in range(repeats + 1):  # the first sitting is the warm-up
        for name, fn in fns:
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            times[name].append(time.perf_counter() - t0)
    total = 0.0
    for name, ts in times.items():
        seconds = statistics.median(ts[1:])
        total += seconds
        bench.rows.append({"section": "pipeline", "model": name, "impl": "ours", "variant":
                           "default settings", "batch": N, "median_s": seconds,
                           "images_s": N / seconds})  # fmt: skip
    bench.rows.append({"section": "pipeline", "model": "whole generate", "impl": "ours",
                       "variant": "sum of stages", "batch": N, "median_s": total,
                       "images_s": N / total})  # fmt: skip
    dec, prior_cfg = model.decoder.cfg, model.priors["diffusion"].cfg
    ups = ", ".join(f"{u.cfg.sample_steps} DDIM steps" for u in model.upsamplers)
    return (
        f"{N} captions; prior {prior_cfg.sample_steps} steps × {prior_cfg.candidates} "
        f"candidates, guidance {prior_cfg.guidance}; decoder {dec.sample_steps} steps, η = "
        f"{dec.eta}, guidance {dec.guidance} (batch doubled); upsamplers {ups}. Each stage is "
        "called as `generate` calls it, in its order, with one generator; median of "
        f"{repeats} after one warm-up."
    )


def stage_flops(bench: Bench) -> None:
    """FLOPs, time and GFLOP/s of one training step of every stage of the Shapes preset, on
    the batch its `Stage` draws (the loss is the component's `forward`)."""
    preset = get_preset("shapes")
    clip = load_component(checkpoint.shipped("shapes") / "clip")
    preset = dataclasses.replace(preset, clip=clip.cfg)
    images, captions = shapes.sample_batch(np.random.default_rng(1), 256, 32)
    with torch.no_grad():
        text = clip.encode_text(captions)
        pool = {"tokens": text.tokens, "mask": text.mask, "z_t": text.z_t,
                "z_i": clip.encode_image(images)}  # fmt: skip
    for name, stage in STAGES.items():
        torch.manual_seed(0)
        module = stage.build(preset).train()
        data = {"prior-diffusion": pool, "prior-ar": pool, "decoder": clip, "glide": clip}
        if stage.fit is not None:
            stage.fit(module, pool)
        B = 4 if bench.args.quick else preset.train[name].batch_size
        batch = stage.batch(preset, module, data.get(name), np.random.default_rng(0), B)
        step = train_step(module, lambda module=module, batch=batch: module(**batch))
        bench.time(step, section="flops", model=name, impl="ours", variant="eager", batch=B,
                   params=peers.count_parameters(module))  # fmt: skip


def profile(bench: Bench) -> list[Row]:
    """Top operators by self CPU time in the Shapes decoder's training step."""
    preset = get_preset("shapes")
    clip = load_component(checkpoint.shipped("shapes") / "clip")
    preset = dataclasses.replace(preset, clip=clip.cfg)
    torch.manual_seed(0)
    module = STAGES["decoder"].build(preset).train()
    B = 4 if bench.args.quick else preset.train["decoder"].batch_size
    batch = STAGES["decoder"].batch(preset, module, clip, np.random.default_rng(0), B)
    step = train_step(module, lambda: module(**batch))
    step()
    steps = max(1, min(bench.repeats, 3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {"operator": e.key, "self CPU ms / step": e.self_cpu_time_total / 1e3 / steps,
         "share": f"{100 * e.self_cpu_time_total / total:.1f}%", "calls / step": e.count // steps}
        for e in events[:15]
    ]  # fmt: skip


# --- report ----------------------------------------------------------------------------------
def _ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Each row of ours with its speed ÷ each peer's at the same section, size, step and
    variant (falling back to the peer's eager row): > 1 means ours is faster."""
    out = df.copy()
    out["× eager"] = ""
    for i, row in df[df.section != "peak"].iterrows():
        same = df[(df.impl == row.impl) & (df.section == row.section) & (df.model == row.model)]
        same = same[(same["size"] == row["size"]) & (same.variant == "eager")]
        if row.variant != "eager" and len(same) and pd.notna(row.median_s):
            out.loc[i, "× eager"] = f"{same.iloc[0].median_s / row.median_s:.2f}"
    for peer in ("diffusers", "dalle2-pytorch"):
        col = f"× {peer}"
        out[col] = ""
        for i, row in df[df.impl == "ours"].iterrows():
            same = df[(df.impl == peer) & (df.section == row.section) & (df.model == row.model)]
            same = same[same["size"] == row["size"]] if "size" in df else same
            match = same[same.variant == row.variant]
            match = match if len(match) else same[same.variant == "eager"]
            if len(match) and pd.notna(match.iloc[0].median_s):
                out.loc[i, col] = f"{match.iloc[0].median_s / row.median_s:.2f}"
    return out


def _table(df: pd.DataFrame, columns: list[str]) -> str:
    columns = [c for c in columns if c in df and df[c].astype(str).str.len().gt(0).any()]
    return df[columns].to_markdown(index=False, floatfmt=".3g", missingval="—") + "\n"


def _cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    """Parse, measure every section not skipped, write the report."""
    p = argparse.ArgumentParser(prog="bench/speed.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats, no compile")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, metavar="NAME",
                   help=f"sections to skip: {', '.join(SECTIONS)}")  # fmt: skip
    p.add_argument("--repeats", type=int, help="timed repeats per row (default 7; --quick 2)")
    p.add_argument("--out", default="results", help="folder of bench.md and bench.csv")
    args = p.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 7)
    warnings.filterwarnings("ignore")
    global SDPA_COUNTED
    SDPA_COUNTED = sdpa_counted()
    bench = Bench(args)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    texts: dict[str, object] = {}
    plan = [("peak", matmul_peak), ("decoder", decoder_unet), ("prior", prior),
            ("pipeline", pipeline), ("flops", stage_flops), ("profile", profile)]  # fmt: skip
    plan = [(name, fn) for name, fn in plan if name not in args.skip]
    for _, fn in tqdm(plan, desc="bench", unit="section", dynamic_ncols=True):
        texts[fn.__name__] = fn(bench)
    df = _ratios(pd.DataFrame(bench.rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench.csv", index=False, float_format="%.6g")
    versions = {d: peers.version(d) or "not installed" for d in ("diffusers", "dalle2-pytorch")}
    command = " ".join(["python bench/speed.py", *sys.argv[1:]])
    lines = [
        "# Speed side by side with the peers"
        + (" (--quick: smoke sizes, not a measurement)" if args.quick else ""),  # fmt: skip
        "",
        f"`{command}` — {started:%Y-%m-%d %H:%M} UTC, {time.perf_counter() - t0:.0f} s in all.",
        "",
        f"Machine: {os.cpu_count()} CPUs ({_cpu_name()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()} (`{sys.executable}`); diffusers {versions['diffusers']}, "
        "dalle2-pytorch "
        f"{versions['dalle2-pytorch']}. Median of {args.repeats} repeats after "
        f"{bench.warmup} warm-up. `× peer`: ours ÷ peer in steps per second (> 1: ours faster), "
        "against the peer's row of the same variant (its eager row where it has none). "
        "`× eager`: a variant's steps per second ÷ the same model's eager ones (the speed-up, "
        "measured before and after in the same run). `% peak`: achieved GFLOP/s over the fp32 "
        "matmul peak below.",
        "",
        "FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; "
        "elementwise work and normalisation count zero). "
        + (
            "It counts PyTorch's fused CPU attention by itself."
            if SDPA_COUNTED
            else "It does **not** count PyTorch's fused CPU attention kernel "
            "(`_scaled_dot_product_flash_attention_for_cpu`, forward and backward): the bench "
            "adds those FLOPs analytically with torch's own formulas (`sdpa_flop_count`, "
            "`sdpa_backward_flop_count`: 4·B·h·N·M·d forward, 2.5× that backward); a "
            "variant's FLOPs are its eager row's (the same arithmetic)."
        ),  # fmt: skip
        "",
    ]
    cols = ["model", "impl", "variant", "size", "batch", "params", "median_s", "gflop",
            "gflop_s", "pct_peak", "images_s", "× eager", "× diffusers", "× dalle2-pytorch",
            "note"]  # fmt: skip
    sections = [
        ("## Matmul peak", "peak", texts.get("matmul_peak")),
        ("## Decoder U-Net: ours against diffusers' UNet2DConditionModel", "decoder",
         "Same layers (bench/speed_peers.py: `diffusers_unet`); inputs 28 context tokens "
         "(24 caption + 4 z_i), no context mask, MSE against a random target. Parameter "
         "counts:\n" + str(texts.get("decoder_unet", ""))),
        ("## Diffusion prior: ours against diffusers' PriorTransformer and DALLE2-pytorch's "
         "DiffusionPriorNetwork", "prior",
         "The denoiser alone (x_t, t, caption tokens, z_t -> x̂_0), MSE against a random target; "
         "ours at the Shapes sizes (embedding 64), the peers with embeddings as wide as the "
         "model (their design). " + str(texts.get("prior", ""))),
        ("## Whole pipeline sampling, per stage", "pipeline", texts.get("pipeline")),
        ("## Where the FLOPs go: one training step of every Shapes stage", "flops",
         "Forward (the component's own loss on the batch its `Stage` draws), backward, AdamW; "
         "batch as the preset trains (the decoder and GLIDE: 32)."),
    ]  # fmt: skip
    for heading, section, text in sections:
        lines += [heading, ""]
        if text:
            lines += [str(text), ""]
        rows = df[df.section == section] if len(df) else df
        lines.append(_table(rows, cols) if len(rows) else "Skipped.\n")
    lines += ["## Top operators of the decoder's training step (self CPU time)", ""]
    top = texts.get("profile")
    lines.append(_table(pd.DataFrame(top), list(top[0])) if top else "Skipped.\n")
    (out / "bench.md").write_text("\n".join(lines))
    print(f"wrote {out / 'bench.md'} and {out / 'bench.csv'} in {time.perf_counter() - t0:.0f} s")


SDPA_COUNTED = True

if __name__ == "__main__":
    main()
