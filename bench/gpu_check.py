"""How fast does each stage of `coco-gpu` train on this GPU? Images/s, step time and MFU.

    .venv/bin/python bench/gpu_check.py                          # one H100/H200: < 8 minutes
    .venv/bin/python bench/gpu_check.py --device cpu --tiny --steps 3   # coco-smoke, seconds

Needs no download: it writes a generated COCO-format folder (`data/generated.py`) and a
randomly initialised open_clip ViT-B-32 saved to a local file into a temporary folder, imports
that CLIP as the `clip` stage, and trains every other stage `--steps` steps with the package's
own loop (`train.train`; bf16 autocast and TF32 on the GPU, `train.precision`), data read by
`--workers` DataLoader processes as in a real run. Step time is measured from each run's
log.csv after a warm-up; FLOPs per step (model forward + backward, not the frozen CLIP's
encoding) are counted once with `torch.utils.flop_counter.FlopCounterMode`, and MFU is FLOPs /
step time / the chip's dense bf16 peak, an assumption (`--peak-tflops`, 989 for H100/H200 SXM)
printed with the table.
Writes OUT/gpu_check.md and OUT/gpu_check.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from unclip_repro.cli import Parser, positive, run
from unclip_repro.components import STAGES, load_component, load_preset
from unclip_repro.config import get_preset, override
from unclip_repro.data.generated import TINY_CLIP, write_coco, write_random_clip
from unclip_repro.data.loader import Stream
from unclip_repro.files import write_json, write_text
from unclip_repro.recipes import Images, Source
from unclip_repro.train import import_clip, load_frozen_clip, precision, train

H200_BF16_TFLOPS = 989.0  # H100/H200 SXM, dense bf16 (NVIDIA's datasheet; 2x with sparsity)


def step_flops(run_dir: Path, frozen, source: Source, device: torch.device) -> float:
    """FLOPs of one training step (forward + backward) of the stage trained in `run_dir`, on
    the batch of step 0 at its preset's batch size."""
    module = load_component(run_dir, device).train()
    preset = load_preset(run_dir)
    stage = run_dir.name
    cfg, spec = preset.train[stage], STAGES[stage]
    data = spec.data(preset, frozen, source) if spec.data is not None else None
    if isinstance(data, Images):
        data.stream = Stream(data.dataset, cfg.batch_size, cfg.seed)
        data.stream.start(0)
    batch = spec.batch(preset, module, data, np.random.default_rng(0), cfg.batch_size)
    if isinstance(data, Images):
        data.stream.close()
    with FlopCounterMode(display=False) as counter:
        with precision(device):
            loss = module(**batch)
        loss.backward()
    return float(counter.get_total_flops())


def step_seconds(run_dir: Path, warmup: int) -> tuple[float, int]:
    """Mean seconds per step after the first `warmup` logged steps, and how many were timed."""
    log = pd.read_csv(run_dir / "log.csv")
    start = log.iloc[min(warmup, len(log) - 2)]
    end = log.iloc[-1]
    steps = int(end["step"] - start["step"])
    return float(end["seconds"] - start["seconds"]) / steps, steps


def main(argv: list[str] | None = None) -> None:
    """Train each stage briefly on generated data; write the speed table."""
    p = Parser(prog="bench/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="coco-smoke sizes and a tiny CLIP (CPU)")
    p.add_argument("--steps", type=int, help="steps per stage (default 200; --tiny 4)")
    p.add_argument("--images", type=int, help="generated pictures (default 2048; --tiny 24)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default 8; --tiny 0)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak (default 989 on CUDA)")
    p.add_argument("--out", default="results/gpu_check")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: pass --device cpu --tiny for the CPU smoke run")
    positive(args.steps, "--steps")
    positive(args.images, "--images")
    steps = args.steps or (4 if args.tiny else 200)
    n_images = args.images or (24 if args.tiny else 2048)
    workers = 0 if args.tiny and args.workers is None else (args.workers or 8)
    peak = args.peak_tflops or (H200_BF16_TFLOPS if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    preset = get_preset("coco-smoke" if args.tiny else "coco-gpu")
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        tmp = Path(tmp)
        # COCO-like pictures: 320 x 256 (COCO's are about 640 x 480; an upsampler reads 256 px)
        size = (48, 40) if args.tiny else (320, 256)
        pairs = {k: str(v) for k, v in write_coco(tmp / "coco", n_images, size).items()}
        source = Source(pairs, workers)
        arch, weights = write_random_clip(tmp / "weights", TINY_CLIP if args.tiny else "ViT-B-32")
        runs = tmp / "runs"
        import_clip(preset, runs / "clip", arch, weights)
        frozen = load_frozen_clip(runs / "clip", runs, device, progress=False)
        for stage in [s for s in preset.train if s != "clip"]:
            print(f"{stage}: {steps} steps", flush=True)
            run_dir = runs / stage
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            short = override(preset, {f"train.{stage}.steps": steps})
            train(short, stage, run_dir, progress=False, source=source)
            seconds, timed = step_seconds(run_dir, warmup=max(1, steps // 10))
            flops = step_flops(run_dir, frozen, source, device)
            batch = preset.train[stage].batch_size
            module = load_component(run_dir)
            row = {
                "stage": stage,
                "parameters (M)": round(sum(q.numel() for q in module.parameters()) / 1e6, 2),
                "batch": batch,
                "steps timed": timed,
                "step (s)": round(seconds, 4),
                "images/s": round(batch / seconds, 1),
                "GFLOP/step": float(f"{flops / 1e9:.4g}"),
                "TFLOP/s": float(f"{flops / seconds / 1e12:.3g}"),
                "MFU": f"{flops / seconds / (peak * 1e12):.1%}" if peak else "–",
            }
            if device.type == "cuda":
                row["peak memory (GB)"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows).to_markdown(index=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    command = " ".join(["python", *(sys.argv if argv is None else ["bench/gpu_check.py", *argv])])
    peak_note = f"{peak:g} TFLOP/s dense bf16 (assumed)" if peak else "none given (no MFU)"
    text = (
        f"# {preset.name}: training speed per stage\n\n"
        f"{name}, torch {torch.__version__}, {steps} steps per stage on {n_images} generated "
        f"pictures, {workers} DataLoader workers, bf16 autocast + TF32 on CUDA; peak "
        f"{peak_note}. Total {time.perf_counter() - t0:.0f} s.\n\n{table}\n\n"
        f"Step time from log.csv after a warm-up; FLOPs of the model's forward + backward "
        f"(FlopCounterMode), without the frozen CLIP's encoding of each batch.\n\n`{command}`\n"
    )
    out = Path(args.out)
    write_text(out / "gpu_check.md", text)
    report = {"device": name, "torch": torch.__version__, "preset": preset.name}
    report |= {"steps": steps, "images": n_images, "workers": workers, "peak_tflops": peak}
    write_json(out / "gpu_check.json", report | {"command": command, "stages": rows})
    print(text)


if __name__ == "__main__":
    sys.exit(run(main))
