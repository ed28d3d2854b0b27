"""The training loop: exact resume, NaN stop, atomic checkpoints, DDP and FSDP under torchrun."""

import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from unclip_repro import checkpoint
from unclip_repro.components import STAGES, Stage, load_component
from unclip_repro.config import TrainConfig, get_preset, override
from unclip_repro.errors import UserError
from unclip_repro.train import TrainingDiverged, check_resumable, precision, train


def smoke(stage=None, steps=None, **changes):
    """The shapes-smoke preset; with `stage`, its training settings changed (steps, ...)."""
    preset = get_preset("shapes-smoke")
    if steps is not None:
        changes["steps"] = steps
    return override(preset, {f"train.{stage}.{k}": v for k, v in changes.items()})


def _weights(run_dir):
    return checkpoint.load_weights(run_dir), checkpoint.load_train_state(run_dir)["model"]


def _interrupt_at(monkeypatch, stage, call):
    """Make `stage`'s batch raise KeyboardInterrupt at its `call`-th draw (1-based)."""
    spec, calls = STAGES[stage], []

    def batch(*args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return spec.batch(*args)

    monkeypatch.setitem(STAGES, stage, dataclasses.replace(spec, batch=batch))
    return spec


def test_resume_equals_unbroken_run(tmp_path, monkeypatch):
    """A cosine-schedule run stopped after its step-3 checkpoint and resumed ends with the
    weights, EMA and log of a run without a stop."""
    preset = smoke("clip", steps=6, checkpoint_every=3)
    train(preset, "clip", tmp_path / "a", progress=False)
    spec = _interrupt_at(monkeypatch, "clip", 5)
    with pytest.raises(KeyboardInterrupt):
        train(preset, "clip", tmp_path / "b", progress=False)
    assert checkpoint.load_config(tmp_path / "b")["step"] == 3
    monkeypatch.setitem(STAGES, "clip", spec)
    train(preset, "clip", tmp_path / "b", resume=True, progress=False)
    (ema_a, raw_a), (ema_b, raw_b) = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert ema_a.keys() == ema_b.keys()
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(raw_a[k], raw_b[k], rtol=0, atol=0, msg=k)
    # and the weights did move: training happened
    fresh = STAGES["clip"].build(get_preset("shapes-smoke")).state_dict()
    assert not torch.equal(fresh["model.text_projection"], raw_a["model.text_projection"])
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log] == ["step", "1", "2", "3", "4", "5", "6"]


def test_resume_refuses_a_step_count_that_rewrites_the_schedule(tmp_path):
    """The cosine CLIP's rate depends on its total: more steps would rewrite the past (one
    line naming --init); a constant-rate prior may be extended, and equals an unbroken run."""
    train(smoke("clip", steps=3), "clip", tmp_path / "clip", progress=False)
    with pytest.raises(checkpoint.CheckpointError, match=r"cosine schedule.*--init"):
        train(smoke("clip", steps=6), "clip", tmp_path / "clip", resume=True)
    cooled = smoke("clip", steps=3, schedule="constant", cooldown=2)
    train(cooled, "clip", tmp_path / "cool", progress=False)
    longer = smoke("clip", steps=6, schedule="constant", cooldown=2)
    with pytest.raises(checkpoint.CheckpointError, match="cooldown"):
        train(longer, "clip", tmp_path / "cool", resume=True)
    for run, steps in (("a", 4), ("b", 2), ("b", 4)):
        preset = smoke("prior-diffusion", steps=steps)
        resume = (tmp_path / run).exists()
        train(preset, "prior-diffusion", tmp_path / run, resume=resume, progress=False,
              clip=tmp_path / "clip")  # fmt: skip
    (ema_a, _), (ema_b, _) = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_cooldown_takes_the_rate_to_zero_over_the_last_steps(tmp_path):
    preset = smoke("clip", steps=6, warmup=1, schedule="constant", cooldown=4)
    train(preset, "clip", tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "log.csv") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    lr = preset.train["clip"].lr  # logged: the rate of the step after each
    assert lrs == pytest.approx([lr, lr, 0.75 * lr, 0.5 * lr, 0.25 * lr, 0.0])


def test_init_starts_a_new_run_from_a_trained_component(tmp_path):
    train(smoke("clip", steps=3), "clip", tmp_path / "a", progress=False)
    still = smoke("clip", steps=1, lr=0.0)  # a rate of zero: the first step moves nothing
    train(still, "clip", tmp_path / "b", progress=False, init=tmp_path / "a")
    ema_a, (_, raw_b) = checkpoint.load_weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in ema_a:
        torch.testing.assert_close(raw_b[k], ema_a[k], rtol=0, atol=0, msg=k)
    with pytest.raises(UserError, match="holds a clip, not a decoder"):
        train(smoke("decoder", steps=1), "decoder", tmp_path / "c", init=tmp_path / "a")


def test_the_decoder_starts_from_glide_with_its_z_i_layers_at_zero(tmp_path):
    train(smoke("clip", steps=2), "clip", tmp_path / "clip", progress=False)
    train(smoke("glide", steps=2), "glide", tmp_path / "glide", progress=False)
    still = smoke("decoder", steps=1, lr=0.0)  # a rate of zero: the first step moves nothing
    train(still, "decoder", tmp_path / "decoder", progress=False, init=tmp_path / "glide")
    glide, (_, decoder) = (
        checkpoint.load_weights(tmp_path / "glide"),
        _weights(tmp_path / "decoder"),
    )
    assert set(decoder) - set(glide) == {"z_emb.weight", "z_emb.bias", "z_ctx.weight", "z_ctx.bias"}
    for k in glide:
        torch.testing.assert_close(decoder[k], glide[k], rtol=0, atol=0, msg=k)
    assert all(not decoder[k].any() for k in ("z_emb.weight", "z_ctx.weight", "z_ctx.bias"))
    with pytest.raises(UserError, match="holds a clip, not a glide"):
        train(smoke(), "glide", tmp_path / "g2", progress=False, init=tmp_path / "clip")


def test_resume_ignores_other_stages_training_and_sampling_settings(tmp_path):
    train(smoke("clip", steps=2), "clip", tmp_path / "clip", progress=False)
    saved = checkpoint.load_config(tmp_path / "clip")
    del saved["preset"]["train"]["clip"]["accumulate"]  # saved before accumulation existed
    later = smoke("clip", steps=2)
    later.train["decoder"].steps, later.budget_minutes = 99, 7.0  # another stage's budget
    later.train["clip"].checkpoint_every = 3  # and this stage's cadence
    later.decoder.eta, later.prior_ar.temperature = 0.5, 0.7  # and how anything samples
    check_resumable(saved, later, "clip", tmp_path / "clip")
    for change in ({"lr": 0.5}, {"accumulate": 2}):  # this stage's own recipe: another run
        other = dataclasses.replace(later, train=dict(later.train))
        other.train["clip"] = dataclasses.replace(later.train["clip"], **change)
        with pytest.raises(checkpoint.CheckpointError, match="train"):
            check_resumable(saved, other, "clip", tmp_path / "clip")
    later = smoke("clip", steps=2)
    later.clip.embed_dim = 16  # the model itself
    with pytest.raises(checkpoint.CheckpointError, match="clip"):
        check_resumable(saved, later, "clip", tmp_path / "clip")


class _Toy(nn.Module):
    """A linear regression whose loss turns NaN when the batch says so."""

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(4, 1)

    def forward(self, x, poison):
        loss = self.w(x).pow(2).mean()
        return loss * torch.nan if poison else loss


@pytest.fixture
def toy_stage(monkeypatch):
    def batch(preset, model, data, rng, batch_size):
        step = len(model.seen)
        model.seen.append(step)
        return {
            "x": torch.from_numpy(rng.normal(size=(batch_size, 4))).float(),
            "poison": step == 4,
        }

    def build(preset):
        m = _Toy()
        m.seen = []
        return m

    monkeypatch.setitem(STAGES, "toy", Stage("toy", "decoder", build, batch, on_clip=False))
    preset = get_preset("shapes-smoke")
    preset.train["toy"] = TrainConfig(steps=10, batch_size=8, warmup=1, checkpoint_every=2)
    return preset


@pytest.fixture
def table_stage(monkeypatch):
    """A toy stage whose batches are the next rows of one fixed table, whatever their size."""
    rows = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))

    def batch(preset, model, data, rng, batch_size):
        model.read += batch_size
        return {"x": rows[model.read - batch_size : model.read], "poison": False}

    def build(preset):
        m = _Toy()
        m.read = 0
        return m

    monkeypatch.setitem(STAGES, "table", Stage("table", "decoder", build, batch, on_clip=False))
    preset = get_preset("shapes-smoke")
    preset.train["table"] = TrainConfig(steps=3, batch_size=16, warmup=1)
    return preset


def _log(run_dir):
    with (run_dir / "log.csv").open() as f:
        return [
            (int(r["step"]), float(r["loss"]), float(r["grad_norm"])) for r in csv.DictReader(f)
        ]


def test_two_micro_batches_step_as_one_batch_of_both(tmp_path, table_stage):
    """accumulate 2 of batch 8 reads the rows one batch of 16 reads and averages their
    gradients: the same losses, gradient norms and weights, three optimiser steps each."""
    train(table_stage, "table", tmp_path / "one", progress=False)
    half = override(table_stage, {"train.table.batch_size": 8, "train.table.accumulate": 2})
    train(half, "table", tmp_path / "two", progress=False)
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r[0] for r in one] == [r[0] for r in two] == [1, 2, 3]
    np.testing.assert_allclose(np.array(one), np.array(two), rtol=1e-5)
    (ema_1, raw_1), (ema_2, raw_2) = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in raw_1:
        torch.testing.assert_close(raw_2[k], raw_1[k], rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(ema_2[k], ema_1[k], rtol=1e-5, atol=1e-6, msg=k)


def test_lr_scales_train_a_prefix_at_its_own_rate(tmp_path, table_stage):
    """`lr_scales`: the bias at factor 0 never moves, the weight at 1 does, and the logged
    rate is the stage's; resumed, the groups come back in the same order."""
    scaled = override(table_stage, {"train.table.lr_scales": [["w.bias", 0.0]]})
    torch.manual_seed(scaled.train["table"].seed)  # as train builds it
    start = STAGES["table"].build(scaled).state_dict()
    train(scaled, "table", tmp_path / "run", progress=False)
    raw = checkpoint.load_train_state(tmp_path / "run")["model"]
    assert torch.equal(raw["w.bias"], start["w.bias"])
    assert not torch.equal(raw["w.weight"], start["w.weight"])
    groups = checkpoint.load_train_state(tmp_path / "run")["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [scaled.train["table"].lr, 0.0]
    more = override(scaled, {"train.table.steps": 4})
    train(more, "table", tmp_path / "run", resume=True, progress=False)
    raw = checkpoint.load_train_state(tmp_path / "run")["model"]
    assert torch.equal(raw["w.bias"], start["w.bias"])


def test_precision_leaves_the_cpu_in_float32():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with precision(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    after = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    assert after == before  # TF32 is set for CUDA runs only
    with precision(torch.device("cpu"), cpu_bf16=True):  # TrainConfig.cpu_bf16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, toy_stage):
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5;.*checkpoint") as e:
        train(toy_stage, "toy", tmp_path, progress=False)
    assert str(checkpoint.resolve(tmp_path)) in str(e.value)
    assert checkpoint.load_config(tmp_path)["step"] == 4
    assert checkpoint.load_train_state(tmp_path)["step"] == 4


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, toy_stage, monkeypatch):
    toy_stage.train["toy"].steps = 2
    train(toy_stage, "toy", tmp_path, progress=False)
    before = checkpoint.load_weights(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    toy_stage.train["toy"].steps = 4  # a constant rate: the run may be extended
    with pytest.raises(checkpoint.CheckpointError, match="cannot write .*disk full.*is kept"):
        train(toy_stage, "toy", tmp_path, resume=True, progress=False)
    after = checkpoint.load_weights(tmp_path)
    assert checkpoint.load_config(tmp_path)["step"] == 2
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "log.csv"]


def test_checkpoint_swap_survives_crash_between_renames(tmp_path):
    checkpoint.save(tmp_path, {"w": torch.ones(2)}, {"step": 1})
    # a crash after renaming checkpoint -> checkpoint.old and before the new one lands
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    assert checkpoint.load_config(tmp_path)["step"] == 1
    checkpoint.save(tmp_path, {"w": torch.zeros(2)}, {"step": 2})
    assert checkpoint.load_config(tmp_path)["step"] == 2
    assert not (tmp_path / "checkpoint.old").exists()


def test_checkpoint_fp16_roundtrip_and_metadata(tmp_path):
    w = {"a": torch.randn(3, 3), "i": torch.arange(3)}
    checkpoint.save(tmp_path, w, {"component": "x"}, dtype=torch.float16)
    back = checkpoint.load_weights(tmp_path)
    assert back["a"].dtype == torch.float32 and back["i"].dtype == torch.int64
    torch.testing.assert_close(back["a"], w["a"], atol=1e-2, rtol=1e-2)
    meta = checkpoint.load_config(tmp_path)
    assert meta["component"] == "x" and meta["version"]
    # the command as typed (`python -m pytest …`), not this machine's interpreter path
    assert meta["command"].startswith("python ") and sys.executable not in meta["command"]


def test_corrupt_and_mismatched_checkpoints_raise_checkpoint_error(tmp_path):
    train(smoke("clip", steps=2), "clip", tmp_path / "run", progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="other settings .*clip.embed_dim"):
        train(get_preset("shapes"), "clip", tmp_path / "run", resume=True)
    folder = checkpoint.resolve(tmp_path / "run")
    (folder / "train_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        train(smoke("clip", steps=2), "clip", tmp_path / "run", resume=True)
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        load_component(tmp_path / "run")


def test_torch_load_is_weights_only(tmp_path):
    checkpoint.save(tmp_path, {"w": torch.ones(1)}, {}, train_state={"step": 1})
    torch.save(
        {"step": 1, "evil": np.random.default_rng(0)},
        checkpoint.resolve(tmp_path) / "train_state.pt",
    )
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load_train_state(tmp_path)


@pytest.fixture(scope="module")
def smoke_clip(tmp_path_factory):
    """A CLIP of the smoke preset, trained for a few steps, in RUNS/clip."""
    runs = tmp_path_factory.mktemp("runs")
    train(smoke("clip", steps=4), "clip", runs / "clip", progress=False)
    return runs


@pytest.mark.parametrize("stage", ["prior-diffusion", "prior-ar"])
def test_prior_stages_resume_exactly_and_record_their_clip(smoke_clip, tmp_path, stage):
    clip = smoke_clip / "clip"
    train(smoke(stage, steps=4), stage, tmp_path / "a", progress=False, clip=clip)
    train(smoke(stage, steps=2), stage, tmp_path / "b", progress=False, clip=clip)
    train(smoke(stage, steps=4), stage, tmp_path / "b", resume=True, progress=False, clip=clip)
    (ema_a, raw_a), (ema_b, raw_b) = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(raw_a[k], raw_b[k], rtol=0, atol=0, msg=k)
    config = checkpoint.load_config(tmp_path / "a")
    assert config["clip"]["sha256"] == checkpoint.file_sha256(
        checkpoint.resolve(clip) / "model.safetensors"
    )
    assert config["train_seconds"] > 0
    prior = load_component(tmp_path / "a")
    if stage == "prior-ar":  # the PCA and quantizers came back with the weights
        assert 1 <= prior.k <= 32 and prior.codes.values.abs().sum() > 0
    # the embedding pool was encoded once and cached in the runs folder, beside the runs
    assert len(list(tmp_path.glob("pool-*.safetensors"))) == 1


def test_prior_stage_needs_a_clip_and_refuses_another(smoke_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained CLIP in .*--stage clip"):
        train(smoke("prior-diffusion", steps=2), "prior-diffusion", tmp_path / "p")
    clip = smoke_clip / "clip"
    prior = smoke("prior-diffusion", steps=2)
    train(prior, "prior-diffusion", tmp_path / "p", progress=False, clip=clip)
    other = tmp_path / "clip2"
    train(smoke("clip", steps=2), "clip", other, progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="another CLIP"):
        train(prior, "prior-diffusion", tmp_path / "p", resume=True, clip=other)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29531",
    ]
    cmd += ["-m", "unclip_repro", "train", "--preset", "shapes-smoke", "--stage", "clip"]
    cmd += ["--steps", "3", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert checkpoint.load_config(tmp_path)["step"] == 3
    clip = load_component(tmp_path)
    assert clip.encode_image(torch.rand(2, 3, 32, 32)).shape == (2, 32)


def test_a_budget_scales_every_stage_and_leaves_the_preset_alone():
    from unclip_repro.train import budget_preset

    full = get_preset("shapes")
    half = budget_preset(full, full.budget_minutes / 2)
    for stage, cfg in full.train.items():
        assert half.train[stage].steps == max(cfg.warmup + 1, round(cfg.steps / 2))
    assert full.train == get_preset("shapes").train  # a copy, not the preset changed
    assert budget_preset(full, None) is full


@pytest.mark.slow
def test_fsdp_two_processes_on_cpu_matches_ddp_and_resumes(smoke_clip, tmp_path):
    """FSDP2 (`fully_shard`) runs on gloo: 2 processes, the decoder's ResBlocks and attention
    sharded. One step under FSDP, resumed to 2 under DDP, then to 3 under FSDP again, gives the
    weights of a DDP run of 3: both write and read the same whole-weight checkpoints, and both
    reduce the gradients of 2 micro-batches a step once, at the second (DDP's `no_sync`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args = ["-m", "unclip_repro", "train", "--preset", "shapes-smoke", "--stage", "decoder"]
    args += ["--clip", str(smoke_clip / "clip"), "--set", "train.accumulate=2"]
    ddp, fsdp = ["--out", str(tmp_path / "ddp")], ["--out", str(tmp_path / "fsdp")]
    for port, extra in [
        (29532, ["--steps", "3", *ddp]),
        (29533, ["--steps", "1", "--set", "train.fsdp=true", *fsdp]),
        (29534, ["--steps", "2", "--resume", *fsdp]),
        (29535, ["--steps", "3", "--set", "train.fsdp=true", "--resume", *fsdp]),
    ]:
        cmd = [*base, f"--master_port={port}", *args, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    config = checkpoint.load_config(tmp_path / "fsdp")
    settings = config["preset"]["train"]["decoder"]
    assert config["step"] == 3 and settings["fsdp"] and settings["accumulate"] == 2
    (ema_d, raw_d), (ema_f, raw_f) = _weights(tmp_path / "ddp"), _weights(tmp_path / "fsdp")
    assert ema_d.keys() == ema_f.keys()
    for k in ema_d:  # the same sums in another order: equal to float rounding
        torch.testing.assert_close(ema_f[k], ema_d[k], rtol=1e-4, atol=1e-5, msg=k)
        torch.testing.assert_close(raw_f[k], raw_d[k], rtol=1e-4, atol=1e-5, msg=k)
    decoder = load_component(tmp_path / "fsdp")  # whole weights, loadable as any checkpoint
    assert decoder.resolution == 32
