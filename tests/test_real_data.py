"""Every stage on real image-caption pairs (issue 15): a tiny random open_clip model saved to a
local file and imported as the `clip` stage, a generated COCO-format folder (with a few bad
files), a pairs table and WebDataset shards; exact resume, the embedding cache, UnCLIP.load."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from unclip_repro import checkpoint
from unclip_repro.__main__ import main
from unclip_repro.components import load_component
from unclip_repro.config import get_preset, override
from unclip_repro.data.embeddings import cached_embeddings
from unclip_repro.errors import UserError
from unclip_repro.pipeline import UnCLIP
from unclip_repro.recipes import Source
from unclip_repro.train import import_clip, load_frozen_clip, train

TINY = {  # an open_clip model config: a ViT and a text tower of width 64, two layers each
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
N = 40  # good images; one missing and one unreadable file besides (max_bad 0.2 in tests)
STAGES = ["prior-diffusion", "prior-ar", "decoder", "glide", "upsampler1", "upsampler2"]
ROOT = Path(__file__).parents[1]  # the checkout, for the torchrun processes' imports
ENCODE = """\
import sys

import torch.distributed as dist

from unclip_repro import distributed
from unclip_repro.data.embeddings import cached_embeddings
from unclip_repro.train import load_frozen_clip

clip, cache, annotations, images = sys.argv[1:]
process = distributed.setup()
frozen = load_frozen_clip(clip, cache, process.device, progress=False)
source = {"annotations": annotations, "images": images, "max_bad": 0.2}
cached_embeddings(frozen.clip, frozen.sha256, cache, source, shard_size=16, progress=False)
dist.destroy_process_group()
"""


def _picture(i: int) -> tuple[Image.Image, str]:
    """A 96×80 picture of a coloured square on a tinted background, and its caption."""
    rng = np.random.default_rng(i)
    name = list(COLOURS)[i % 3]
    pixels = np.full((80, 96, 3), rng.integers(150, 250, 3), dtype=np.uint8)
    x, y = rng.integers(10, 50, 2)
    pixels[y : y + 25, x : x + 25] = COLOURS[name]
    return Image.fromarray(pixels), f"a {name} square"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A COCO folder, a pairs table, two WebDataset shards and a tiny open_clip file."""
    root = tmp_path_factory.mktemp("real")
    (root / "images").mkdir()
    images, annotations = [], []
    for i in range(N):
        picture, text = _picture(i)
        picture.save(root / "images" / f"{i:04d}.png")
        images.append({"id": i, "file_name": f"{i:04d}.png"})
        annotations.append({"id": i, "image_id": i, "caption": text})
    (root / "images" / "bad.jpg").write_bytes(b"not an image")
    for i, name in [(N, "bad.jpg"), (N + 1, "missing.png")]:
        images.append({"id": i, "file_name": name})
        annotations.append({"id": i, "image_id": i, "caption": "a broken picture"})
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    table = ["image,caption"] + [f"images/{i:04d}.png,{_picture(i)[1]}" for i in range(N)]
    (root / "pairs.csv").write_text("\n".join(table) + "\n")
    for shard in range(2):
        with tarfile.open(root / f"shard-{shard}.tar", "w") as tar:
            for i in range(shard * N // 2, (shard + 1) * N // 2):
                picture, text = _picture(i)
                buf = io.BytesIO()
                picture.save(buf, "JPEG")
                for suffix, data in [("jpg", buf.getvalue()), ("txt", text.encode())]:
                    info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / "tiny.json").write_text(json.dumps(TINY))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "tiny.safetensors")
    return root


def coco(root, max_bad: float = 0.2) -> Source:
    """The COCO source of `world`."""
    return Source(
        {"annotations": root / "captions.json", "images": root / "images"} | {"max_bad": max_bad}
    )


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """The tiny CLIP imported, then every other stage trained 3 steps on the COCO folder."""
    runs = tmp_path_factory.mktemp("runs")
    preset = get_preset("coco-smoke")
    import_clip(preset, runs / "clip", str(world / "tiny.json"), world / "tiny.safetensors")
    preset = override(preset, {f"train.{stage}.steps": 3 for stage in preset.train})
    for stage in STAGES:
        train(preset, stage, runs / stage, progress=False, source=coco(world))
    return runs


def test_import_stores_the_clip_in_its_run_folder(world, runs):
    config = checkpoint.load_config(runs / "clip")
    assert config["preset"]["clip"]["model_config"] == TINY
    assert config["imported"]["sha256"] == checkpoint.file_sha256(world / "tiny.safetensors")
    clip = load_component(runs / "clip")  # from the run folder alone
    reference = open_clip.CLIP(**TINY)
    open_clip.load_checkpoint(reference, str(world / "tiny.safetensors"))
    for k, v in reference.state_dict().items():
        assert torch.equal(clip.model.state_dict()[k], v), k
    assert clip.encode_text(["a red square"]).tokens.shape == (1, 32, 64)


def test_every_stage_trains_and_the_pipeline_generates(runs):
    for stage in STAGES:
        assert checkpoint.load_config(runs / stage)["step"] == 3
    assert "annotations" in checkpoint.load_config(runs / "decoder")["data"]
    # the priors' embeddings were encoded once, into one cache beside the runs
    (cache,) = runs.glob("embeddings-*")
    index = json.loads((cache / "index.json").read_text())
    assert index["rows"] == [N]  # the two bad files skipped
    images = UnCLIP.load(runs).generate(["a red square"], steps=2)
    assert images.shape == (1, 3, 128, 128) and 0 <= images.min() <= images.max() <= 1


def test_resume_on_coco_equals_an_unbroken_run(world, runs, tmp_path):
    clip = runs / "clip"
    for stage, n in [("decoder", 1), ("upsampler1", 1), ("decoder", 2)]:  # n micro-batches a step
        a, b = tmp_path / f"{stage}-{n}-a", tmp_path / f"{stage}-{n}-b"
        kw = {"progress": False, "clip": clip, "source": coco(world)}
        for steps, run, resume in [(4, a, False), (2, b, False), (4, b, True)]:
            changes = [f"train.steps={steps}", f"train.accumulate={n}"]
            train(
                override(get_preset("coco-smoke"), changes, stage), stage, run, resume=resume, **kw
            )
        assert checkpoint.load_config(b)["preset"]["train"][stage]["accumulate"] == n
        wa, wb = checkpoint.load_weights(a), checkpoint.load_weights(b)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


def test_the_embedding_cache_is_sharded_and_resumable(world, runs):
    frozen = load_frozen_clip(runs / "clip", runs, torch.device("cpu"), progress=False)
    folder_of = lambda: next(world.glob("embeddings-*"))  # noqa: E731
    args = (frozen.clip, frozen.sha256, world, coco(world).pairs)
    pool = cached_embeddings(*args, shard_size=16, progress=False)
    folder = folder_of()
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 3 and pool["z_i"].shape == (N, 32) and pool["tokens"].shape[2] == 64
    torch.testing.assert_close(pool["z_i"].norm(dim=1), torch.ones(N))
    # an interrupted encoding: the index and the last shard gone; the others are kept
    (folder / "index.json").unlink()
    shards[-1].unlink()
    kept = shards[0].stat().st_mtime_ns
    again = cached_embeddings(*args, shard_size=16, progress=False)
    assert shards[0].stat().st_mtime_ns == kept and shards[-1].is_file()
    for k in pool:
        assert torch.equal(pool[k], again[k]), k
    # a damaged shard (a disk error, a copy cut short): one line naming it, never a traceback
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=f"damaged embedding cache file .*{shards[1].name}"):
        cached_embeddings(*args, shard_size=16, progress=False)
    shards[1].write_bytes(data)


@pytest.mark.slow
def test_two_gloo_ranks_write_the_cache_one_process_writes(world, tmp_path):
    """Under torchrun (2 CPU processes, gloo) rank r encodes cache shards r, r + 2, …: the
    same shards and index as one process writes."""
    clip, script = tmp_path / "clip", tmp_path / "encode.py"
    import_clip(
        get_preset("coco-smoke"), clip, str(world / "tiny.json"), world / "tiny.safetensors"
    )
    script.write_text(ENCODE)
    args = [str(clip), str(tmp_path / "two"), str(world / "captions.json"), str(world / "images")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [*torchrun, "--master_port=29536", str(script), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    frozen = load_frozen_clip(clip, tmp_path, torch.device("cpu"), progress=False)
    source = {"annotations": args[2], "images": args[3], "max_bad": 0.2}
    cached_embeddings(frozen.clip, frozen.sha256, tmp_path / "one", source, 16, progress=False)
    (one,), (two,) = (
        (tmp_path / "one").glob("embeddings-*"),
        (tmp_path / "two").glob("embeddings-*"),
    )
    assert one.name == two.name  # the same key: the same CLIP and source
    index = json.loads((one / "index.json").read_text())
    assert json.loads((two / "index.json").read_text()) == index
    assert len(index["shards"]) == 3 and sum(index["rows"]) == N
    for name in index["shards"]:  # the same tensors, to float rounding (threads may differ)
        a, b = load_file(one / name), load_file(two / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], msg=f"{name} {k}")


def test_decoder_on_a_pairs_table_and_on_shards_through_the_cli(world, runs, tmp_path, capsys):
    shutil.copytree(runs / "clip", tmp_path / "clip")
    base = ["train", "--preset", "coco-smoke", "--stage", "decoder", "--steps", "2"]
    assert main([*base, "--pairs", str(world / "pairs.csv"), "--root", str(world),
                 "--out", str(tmp_path / "decoder")]) == 0  # fmt: skip
    shards = str(world / "shard-{0..1}.tar")
    assert main([*base, "--shards", shards, "--out", str(tmp_path / "d2")]) == 0
    assert main([*base, "--steps", "3", "--shards", shards, "--resume",
                 "--out", str(tmp_path / "d2")]) == 0  # fmt: skip
    assert checkpoint.load_config(tmp_path / "d2")["step"] == 3
    shutil.copytree(tmp_path / "decoder", tmp_path / "p" / "decoder")
    shutil.copytree(runs / "clip", tmp_path / "p" / "clip")
    assert UnCLIP.load(tmp_path / "p").generate(["a blue square"], prior="text", steps=2).shape == (
        1,
        3,
        32,
        32,
    )


def test_one_line_errors(world, tmp_path, capsys):
    missing = tmp_path / "absent.safetensors"
    args = ["train", "--preset", "coco-smoke", "--stage", "clip", "--clip-model"]
    assert main([*args, str(world / "tiny.json"), "--clip-checkpoint", str(missing),
                 "--out", str(tmp_path / "clip")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "Hugging Face" in err
    assert main([*args, "ViT-Nope", "--clip-checkpoint", str(world / "tiny.safetensors"),
                 "--out", str(tmp_path / "clip")]) == 2  # fmt: skip
    assert "open_clip knows no model" in capsys.readouterr().err
    train_decoder = ["train", "--preset", "coco-smoke", "--stage", "decoder"]
    assert main([*train_decoder, "--out", str(tmp_path / "decoder")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--annotations" in err and "--shards" in err
    assert main(["train", "--preset", "shapes-smoke", "--stage", "decoder",
                 "--shards", "x.tar", "--out", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "Shapes world" in capsys.readouterr().err


def test_coco_gpu_chains_64_to_256_and_the_paper_shards_its_large_stages():
    preset = get_preset("coco-gpu")
    assert preset.data.resolution == preset.upsampler1.low == 64 and preset.upsampler1.high == 256
    assert preset.upsampler1.crop == 64  # the paper's quarter-size crops
    assert set(preset.train) == set(STAGES) - {"upsampler2"}  # COCO has no 1024 px images
    assert not any(cfg.fsdp for cfg in preset.train.values())  # fits one GPU
    paper = get_preset("paper").train
    assert all(paper[s].fsdp for s in ("prior-diffusion", "prior-ar", "decoder", "glide"))
