"""Post-hoc EMA (EDM2): snapshots while training, any width built after, exact on resume."""

import dataclasses

import pytest
import torch
from ema_pytorch.post_hoc_ema import sigma_rel_to_gamma
from safetensors.torch import load_file
from torch import nn

from unclip_repro import checkpoint, posthoc_ema
from unclip_repro.__main__ import main
from unclip_repro.components import STAGES, Stage
from unclip_repro.config import TrainConfig, get_preset
from unclip_repro.errors import UserError
from unclip_repro.train import train


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Linear(4, 4)

    def forward(self, x):
        return self.w(x).pow(2).mean()


@pytest.fixture
def toy(monkeypatch):
    """A stage of one linear layer on random batches, snapshotting every 3 of its 10 steps."""

    def batch(preset, model, data, rng, batch_size):
        return {"x": torch.from_numpy(rng.normal(size=(batch_size, 4))).float()}

    monkeypatch.setitem(
        STAGES, "toy", Stage("toy", "decoder", lambda p: _Toy(), batch, on_clip=False)
    )
    preset = get_preset("shapes-smoke")
    preset.train["toy"] = TrainConfig(
        steps=10, batch_size=8, warmup=1, checkpoint_every=5, ema_snapshot_every=3
    )
    return preset


def test_a_run_writes_snapshots_of_each_width_and_its_own_width_comes_back(tmp_path, toy):
    train(toy, "toy", tmp_path / "run", progress=False)
    found = posthoc_ema.snapshots(tmp_path / "run")
    assert [(s, t) for s, t, _ in found] == [
        (s, t) for t in (3, 6, 9, 10) for s in (0.05, 0.10)
    ]  # every 3 steps and at the last
    weights, step = posthoc_ema.synthesize(tmp_path / "run", 0.10)
    assert step == 10
    tracked = load_file(tmp_path / "run" / "ema" / "sigma0.100-step0000010.safetensors")
    for k, v in tracked.items():
        torch.testing.assert_close(weights[k], v, rtol=1e-4, atol=1e-5, msg=k)
    earlier, _ = posthoc_ema.synthesize(tmp_path / "run", 0.10, step=6)
    assert not torch.allclose(earlier["w.weight"], weights["w.weight"])


def test_a_width_between_the_tracked_ones_averages_a_linear_path_as_the_power_law_says(tmp_path):
    """θ_t = t: the power-function EMA of exponent γ averages to (γ + 1) / (γ + 2) · t. The
    solve, given only the snapshots of σ_rel 0.05 and 0.10, must find that for σ_rel 0.07."""
    module = nn.Linear(1, 1, bias=False)
    tracker = posthoc_ema.Tracker(module, (0.05, 0.10), tmp_path / "ema")
    for t in range(1, 2001):
        with torch.no_grad():
            module.weight.fill_(float(t))
        tracker.update()
        if t % 200 == 0:
            tracker.snapshot(t)
    weights, step = posthoc_ema.synthesize(tmp_path, 0.07)
    gamma = sigma_rel_to_gamma(0.07)
    expected = (gamma + 1) / (gamma + 2) * step
    assert step == 2000
    assert weights["weight"].item() == pytest.approx(expected, rel=2e-3)
    for tracked in (0.05, 0.10):  # and neither tracked width is that average
        g = sigma_rel_to_gamma(tracked)
        assert abs((g + 1) / (g + 2) * step - expected) > 5


def test_a_resumed_run_writes_the_same_snapshots(tmp_path, toy, monkeypatch):
    train(toy, "toy", tmp_path / "a", progress=False)
    spec, calls = STAGES["toy"], []

    def batch(*args):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return spec.batch(*args)

    monkeypatch.setitem(STAGES, "toy", dataclasses.replace(spec, batch=batch))
    with pytest.raises(KeyboardInterrupt):
        train(toy, "toy", tmp_path / "b", progress=False)
    assert checkpoint.load_config(tmp_path / "b")["step"] == 5  # snapshots at 3 and 6 written
    monkeypatch.setitem(STAGES, "toy", spec)
    train(toy, "toy", tmp_path / "b", resume=True, progress=False)
    a, b = posthoc_ema.snapshots(tmp_path / "a"), posthoc_ema.snapshots(tmp_path / "b")
    assert [f.name for *_, f in a] == [f.name for *_, f in b]
    for (*_, fa), (*_, fb) in zip(a, b, strict=True):
        for k, v in load_file(fa).items():
            assert torch.equal(v, load_file(fb)[k]), (fb.name, k)


def test_the_command_writes_a_component_and_refuses_bad_input_in_one_line(tmp_path, toy, capsys):
    train(toy, "toy", tmp_path / "run", progress=False)
    assert main(["posthoc-ema", "--run", str(tmp_path / "run"), "--sigma-rel", "0.08",
                 "--out", str(tmp_path / "s008")]) == 0  # fmt: skip
    config = checkpoint.load_config(tmp_path / "s008")
    assert config["posthoc_ema"]["sigma_rel"] == 0.08 and config["component"] == "toy"
    assert set(checkpoint.load_weights(tmp_path / "s008")) == {"w.weight", "w.bias"}
    capsys.readouterr()
    for args, said in [
        (["--sigma-rel", "0.4"], "sigma_rel must lie in"),
        (["--sigma-rel", "0.08", "--step", "4"], "no snapshot at step 4"),
    ]:
        argv = ["posthoc-ema", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "x")]
        assert main(argv + args) != 0
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
    with pytest.raises(UserError, match="no EMA snapshots"):
        posthoc_ema.synthesize(tmp_path / "nothing", 0.1)
