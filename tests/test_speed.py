"""The speed-ups bench/speed.py measures give the plain path's numbers: exactly where they
claim to, within a stated tolerance where the arithmetic changes; and the bench's smoke run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from unclip_repro import checkpoint
from unclip_repro.components import COMPONENTS
from unclip_repro.config import get_preset
from unclip_repro.decoder import Decoder
from unclip_repro.train import adamw, train

ROOT = Path(__file__).resolve().parents[1]


def _decoder() -> Decoder:
    torch.manual_seed(0)
    decoder = COMPONENTS["decoder"].build(get_preset("shapes-smoke")).eval()
    for p in decoder.parameters():  # the zero-initialised output layers would hide everything
        torch.nn.init.normal_(p, std=0.05)
    return decoder


def _inputs(decoder: Decoder, B: int = 4, L: int = 9) -> dict:
    g = torch.Generator().manual_seed(1)
    R, W = decoder.resolution, decoder.text.in_features
    lengths = torch.tensor([3, 5, 2, 4])[:B]  # all shorter than L: padding to cut
    return {
        "x_t": torch.randn(B, 3, R, R, generator=g),
        "t": torch.tensor([10, 500, 999, 250])[:B],
        "tokens": torch.randn(B, L, W, generator=g),
        "mask": torch.arange(L)[None] < lengths[:, None],
        "z_i": torch.randn(B, decoder.embed_dim, generator=g),
        "drop_text": torch.tensor([False, True, False, False])[:B],
        "drop_z": torch.tensor([False, False, True, False])[:B],
    }


def _denoise_before(decoder: Decoder, x_t, t, tokens, mask, z_i, drop_text, drop_z):  # noqa: ANN001, ANN202
    """`Decoder.denoise` as it was before the padding cut moved out of the compilable part."""
    lengths = mask.sum(1).long()
    L = max(int(lengths.max()), 1)
    tokens, mask = tokens[:, :L], mask[:, :L].bool()
    final = tokens[torch.arange(len(tokens)), (lengths - 1).clamp(min=0)]
    keep = ~drop_text
    mask = mask & keep[:, None]
    context = decoder.text(tokens)
    emb = decoder.text_emb(final) * keep[:, None]
    z = z_i * decoder.scale
    z = torch.where(drop_z[:, None], torch.zeros_like(z), z)
    emb = emb + decoder.z_emb(z)
    z_tokens = decoder.z_ctx(z).view(z.shape[0], decoder.cfg.z_tokens, -1)
    context = torch.cat([context, z_tokens], dim=1)
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], decoder.cfg.z_tokens)], dim=1)
    return decoder.unet(x_t, t, emb, context, mask)


@torch.no_grad()
def test_denoise_split_is_bitwise_the_old_denoise():
    decoder = _decoder()
    inputs = _inputs(decoder)
    assert torch.equal(decoder.denoise(**inputs), _denoise_before(decoder, **inputs))


def test_fused_attention_takes_the_fused_kernel_and_matches_the_plain_path():
    """`UNetConfig.fused_attention` runs attention on PyTorch's fused CPU kernel (the plain
    path's layout falls back to the math kernel) and gives the plain decoder's prediction and
    gradients within 1e-5; off, the path is unchanged."""
    import dataclasses

    plain = _decoder()
    fused = COMPONENTS["decoder"].build(get_preset("shapes-smoke"))
    unet = dataclasses.replace(fused.unet.cfg, fused_attention=True)
    fused.unet = type(fused.unet)(unet, fused.resolution)
    fused.load_state_dict(plain.state_dict())
    inputs = _inputs(plain)
    outputs = []
    for model in (plain, fused):
        with torch.profiler.profile() as prof:
            out = model.denoise(**inputs)
            out.square().mean().backward()
        ops = {e.key for e in prof.key_averages()}
        outputs.append((out, [p.grad for p in model.parameters()], ops))
    (a, grads_a, ops_a), (b, grads_b, ops_b) = outputs
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops_b
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in ops_a
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_plain_attention_is_the_math_kernel():
    """Off, `fused_attention` leaves the plain path on PyTorch's math kernel: forcing it (the
    bench's "unfused attention" row) gives bitwise the same prediction."""
    decoder = _decoder()
    inputs = _inputs(decoder)
    plain = decoder.denoise(**inputs)
    with sdpa_kernel(SDPBackend.MATH):
        math = decoder.denoise(**inputs)
    assert torch.equal(plain, math)


def test_cpu_bf16_autocast_loss_within_two_percent():
    """bf16 autocast (`TrainConfig.cpu_bf16`) changes the loss by under 2% (bf16 keeps 8 bits
    of mantissa: about 0.4% per rounding)."""
    decoder = _decoder().train()
    inputs = _inputs(decoder)
    images = (inputs["x_t"].clamp(-1, 1) + 1) / 2
    batch = {"images": images, "tokens": inputs["tokens"], "mask": inputs["mask"]}
    batch["z_i"] = inputs["z_i"]
    torch.manual_seed(3)
    plain = decoder(**batch)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = decoder(**batch)
    assert fast.dtype == torch.float32  # mse_loss autocasts to float32
    torch.testing.assert_close(fast, plain, rtol=2e-2, atol=0)


def test_train_cpu_bf16_runs_and_resumes_with_or_without(smoke_runs, tmp_path):
    """`train(cpu_bf16=True)` trains (finite loss), is recorded in the checkpoint, and a run
    may switch it on resume, as `fsdp`."""
    out = tmp_path / "decoder"
    preset = get_preset("shapes-smoke")
    clip = smoke_runs / "clip"
    result = train(preset, "decoder", out, steps=1, progress=False, clip=clip, cpu_bf16=True)
    assert torch.isfinite(torch.tensor(result.loss))
    saved = checkpoint.load_config(out)["preset"]["train"]["decoder"]
    assert saved["cpu_bf16"] is True
    result = train(preset, "decoder", out, steps=2, resume=True, progress=False, clip=clip)
    assert result.step == 2 and torch.isfinite(torch.tensor(result.loss))


@pytest.mark.slow
def test_compiled_denoiser_has_no_graph_break_and_matches_eager():
    """`compile_denoiser(fullgraph=True)` compiles (a graph break would raise) and gives the
    eager prediction within 1e-4 (Inductor fuses and reorders float32 arithmetic)."""
    decoder = _decoder()
    inputs = _inputs(decoder)
    with torch.no_grad():
        eager = decoder.denoise(**inputs)
        compiled = decoder.compile_denoiser(fullgraph=True).denoise(**inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bench_quick_writes_every_section(tmp_path):
    """`bench/speed.py --quick` writes bench.md and bench.csv with every section, in under a
    minute on one thread (peers that are not installed say so: the next test)."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "bench/speed.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = (tmp_path / "bench.md").read_text()
    for heading in (
        "## Matmul peak",
        "## Decoder U-Net",
        "## Diffusion prior",
        "## Whole pipeline sampling",
        "## Where the FLOPs go",
        "## Top operators",
    ):
        assert heading in report
    assert "python bench/speed.py --quick" in report
    rows = (tmp_path / "bench.csv").read_text().splitlines()
    assert rows[0].startswith("section,") and len(rows) > 10


def test_fused_adamw_matches_the_default_cpu_adamw():
    """Three steps of the decoder with fused AdamW (`TrainConfig.fused_adamw`) leave the
    weights of PyTorch's default CPU AdamW within 1e-5, 0.2% of three steps' updates at lr 2e-3
    (each step differs by an ulp or so, which the next gradients carry on: not bitwise, hence
    off by default), with the Shapes decoder's settings (weight decay on matrices, clipping)."""
    cfg = get_preset("shapes").train["decoder"]
    weights = {}
    for fused in (False, True):
        decoder = _decoder().train()
        optimizer, _ = adamw(decoder, cfg, fused=True if fused else None)
        inputs = _inputs(decoder)
        batch = {k: inputs[k] for k in ("tokens", "mask", "z_i")}
        batch["images"] = (inputs["x_t"].clamp(-1, 1) + 1) / 2
        torch.manual_seed(5)
        for _ in range(3):
            optimizer.zero_grad()
            decoder(**batch).backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
            optimizer.step()
        weights[fused] = [p.detach().clone() for p in decoder.parameters()]
    for a, b in zip(weights[False], weights[True], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_trainer_fuses_adamw_only_when_asked(tmp_path):
    import dataclasses

    from unclip_repro.train import _setup

    preset = get_preset("shapes-smoke")
    run = _setup(preset, "upsampler1", tmp_path / "a", False, False, None)
    assert not any(group["fused"] for group in run.optimizer.param_groups)
    fast = dataclasses.replace(preset.train["upsampler1"], fused_adamw=True)
    preset = dataclasses.replace(preset, train=preset.train | {"upsampler1": fast})
    run = _setup(preset, "upsampler1", tmp_path / "b", False, False, None)
    assert all(group["fused"] for group in run.optimizer.param_groups)


def test_bench_rows_say_not_installed_for_a_missing_peer(monkeypatch):
    """A peer that is not installed gets rows that say so; nothing raises."""
    import argparse
    import importlib.util

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("speed", ROOT / "bench/speed.py")
        speed = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(speed)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setattr(speed.peers, "version", lambda dist: None)
    args = argparse.Namespace(quick=True, skip=["compile"], repeats=1, out=None)
    bench = speed.Bench(args)
    bench.peak = 1.0
    speed.prior(bench)
    missing = [r for r in bench.rows if r.get("note")]
    assert {r["impl"] for r in missing} == {"diffusers", "dalle2-pytorch"}
    assert all("not installed" in r["note"] for r in missing)
    assert [r["impl"] for r in bench.rows if "median_s" in r] == ["ours", "ours"]
