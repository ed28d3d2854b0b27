"""The speed-ups bench/speed.py measures give the plain path's numbers: exactly where they
claim to, within a stated tolerance where the arithmetic changes; and the bench's smoke run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from unclip_repro import checkpoint
from unclip_repro.components import STAGES
from unclip_repro.config import get_preset, override
from unclip_repro.decoder import Decoder, TextEncoder
from unclip_repro.sequence import CausalTransformer
from unclip_repro.train import train
from unclip_repro.unet import AttentionBlock

ROOT = Path(__file__).resolve().parents[1]


def _decoder() -> Decoder:
    torch.manual_seed(0)
    decoder = STAGES["decoder"].build(get_preset("shapes-smoke")).eval()
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


def test_unet_attention_takes_the_fused_kernel():
    """The decoder's attention runs on PyTorch's fused CPU kernel, forward and backward: q, k
    and v come out in the layout it takes (a strided layout would fall back to the math one)."""
    decoder = _decoder()
    with torch.profiler.profile() as prof:
        decoder.denoise(**_inputs(decoder)).square().mean().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops


def _sequence_calls(device: str = "cpu") -> dict[str, Callable[[], Tensor]]:
    """The priors' causal Transformer and the decoder's own text encoder, each called on a
    padded batch (their masks: causal plus key padding, key padding)."""
    torch.manual_seed(0)
    prior = CausalTransformer(32, 2, 4, max_len=8).to(device)
    x = torch.randn(4, 12, 32, device=device)
    valid = torch.arange(12, device=device)[None] < torch.tensor(
        [[12], [9], [7], [5]], device=device
    )
    encoder = TextEncoder(vocab_size=50, context_length=16, width=32, layers=2, heads=4).to(device)
    ids = torch.randint(0, 50, (4, 10), device=device)
    mask = torch.arange(10, device=device)[None] < torch.tensor(
        [[10], [6], [3], [1]], device=device
    )
    return {
        "prior transformer": lambda: prior(x, valid, prefix=6),
        "text encoder": lambda: encoder(ids, mask),
    }


@pytest.mark.parametrize("name", ["prior transformer", "text encoder"])
def test_sequence_attention_takes_the_fused_kernel(name):
    """torch's Transformer layers, which the priors and the decoder's text encoder use, reach
    the same fused CPU kernel with their masks, forward and backward (no math fallback)."""
    call = _sequence_calls()[name]
    with torch.profiler.profile() as prof:
        call().square().mean().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops


def _reference_attention(block: AttentionBlock, x: Tensor, context: Tensor, mask: Tensor):
    """GLIDE's attention written out: softmax(q kᵀ / √d) v over [context, image] keys."""
    B, C, H, W = x.shape
    heads, d = block.heads, C // block.heads
    qkv = block.qkv(block.norm(x).flatten(2))  # (B, 3C, HW), the 1×1 convolution itself
    q, k, v = (part.reshape(B, heads, d, H * W) for part in qkv.chunk(3, dim=1))
    ck, cv = (part.reshape(B, -1, heads, d).permute(0, 2, 3, 1)
              for part in block.context_kv(context).chunk(2, dim=-1))  # fmt: skip
    k, v = torch.cat([ck, k], dim=3), torch.cat([cv, v], dim=3)  # (B, heads, d, N + HW)
    logits = torch.einsum("bhdq,bhdk->bhqk", q, k) / d**0.5
    keep = torch.cat([mask, mask.new_ones(B, H * W)], dim=1)[:, None, None]
    weights = logits.masked_fill(~keep, float("-inf")).softmax(-1)
    out = torch.einsum("bhqk,bhdk->bhdq", weights, v).reshape(B, C, H * W)
    return x + block.proj(out).view(B, C, H, W)


def test_attention_matches_a_plain_reference():
    """The attention block (fused kernel, position-major layout) gives the written-out
    attention's output and gradients within float32 rounding."""
    torch.manual_seed(0)
    block = AttentionBlock(64, 16, context_dim=32, groups=8)
    for p in block.parameters():  # the zero-initialised projection would hide everything
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 64, 8, 8, generator=g)
    context = torch.randn(3, 6, 32, generator=g)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] + [False] * 5])
    results = []
    for fn in (block, lambda *a: _reference_attention(block, *a)):
        block.zero_grad()
        out = fn(x, context, mask)
        out.square().mean().backward()
        results.append((out, [p.grad.clone() for p in block.parameters()]))
    (ours, grads), (ref, ref_grads) = results
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


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


def test_train_cpu_bf16_trains_is_recorded_and_resumes_only_with_itself(smoke_runs, tmp_path):
    """`--set train.cpu_bf16=true` trains (finite loss) and is recorded in the checkpoint; it
    changes the numbers, so a resume must keep it (`train.resume_conflicts`)."""
    out, clip = tmp_path / "decoder", smoke_runs / "clip"
    fast = override(get_preset("shapes-smoke"), ["train.cpu_bf16=true", "train.steps=1"], "decoder")
    result = train(fast, "decoder", out, progress=False, clip=clip)
    assert torch.isfinite(torch.tensor(result.loss))
    saved = checkpoint.load_config(out)["preset"]
    assert saved["train"]["decoder"]["cpu_bf16"] is True
    assert saved["overrides"] == {"train.decoder.cpu_bf16": True, "train.decoder.steps": 1}
    plain = override(get_preset("shapes-smoke"), {"train.decoder.steps": 2})
    with pytest.raises(checkpoint.CheckpointError, match="cpu_bf16: True -> False"):
        train(plain, "decoder", out, resume=True, clip=clip)
    longer = override(fast, {"train.decoder.steps": 2})
    result = train(longer, "decoder", out, resume=True, progress=False, clip=clip)
    assert result.step == 2 and torch.isfinite(torch.tensor(result.loss))


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
    assert "fused AdamW" not in report and "compile_denoiser" not in report  # gone after 385c659
    rows = (tmp_path / "bench.csv").read_text().splitlines()
    assert rows[0].startswith("section,") and len(rows) > 10


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_attention_runs_with_the_math_kernel_disabled():
    """On CUDA the attention of the U-Net, the priors' Transformer and the text encoder runs
    with only the fused kernels allowed (flash and memory-efficient, bf16 as training
    autocasts): a layout they refused would raise here instead of falling back to math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    decoder = _decoder().cuda()
    inputs = {k: v.cuda() for k, v in _inputs(decoder).items()}
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    with sdpa_kernel(fused), torch.autocast("cuda", dtype=torch.bfloat16):
        out = decoder.denoise(**inputs).float()
        out.square().mean().backward()
        sequences = [call().float() for call in _sequence_calls("cuda").values()]
        for seq in sequences:
            seq.square().mean().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(seq).all() for seq in sequences)
