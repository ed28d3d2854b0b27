"""Real image-caption data (unclip_repro.data.captions) on tiny files the tests write: COCO,
tables of pairs, WebDataset shards; image modes, skip counts, refusals, and how shards split
across DataLoader workers and ranks."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from unclip_repro.data.captions import FilePairs, ShardPairs, collate, load_image, open_pairs
from unclip_repro.errors import UserError

N_GOOD = 40  # decodable images; two bad ones (truncated, missing) come last: 2/42 < 5%
MODES = ["RGB", "L", "CMYK", "RGBA", "P"]
R = 16


def _image_bytes(i: int, mode: str) -> tuple[str, bytes]:
    """A 24×32 image of `mode` as (file name, encoded bytes): JPEG for RGB/L/CMYK, else PNG."""
    pixels = np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    fmt = "JPEG" if mode in ("RGB", "L", "CMYK") else "PNG"
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, fmt)
    return f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}", out.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images of every mode, then a truncated one and a missing one; returns (folder, pairs)."""
    images = tmp_path_factory.mktemp("pairs") / "images"
    images.mkdir()
    names = []
    for i in range(N_GOOD):
        name, data = _image_bytes(i, MODES[i % len(MODES)])
        (images / name).write_bytes(data)
        names.append(name)
    _, data = _image_bytes(99, "RGB")
    (images / "cut.jpg").write_bytes(data[: len(data) // 3])
    pairs = [(name, f"caption {i}") for i, name in enumerate([*names, "cut.jpg", "gone.jpg"])]
    return images, pairs


def _all(dataset, **loader):
    """Every (image batch, captions) of a dataset through a DataLoader with `collate`."""
    batches, it = [], iter(DataLoader(dataset, batch_size=8, collate_fn=collate, **loader))
    try:
        batches += [b for b in it if b is not None]  # None: every item of the batch skipped
    finally:  # on an error, stop the workers now, not when its traceback is collected (10 s)
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
    return torch.cat([b.image for b in batches]), [c for b in batches for c in b.caption]


def _check(images, captions, expected):
    assert sorted(captions) == sorted(expected) and len(set(captions)) == len(captions)
    assert images.shape == (len(expected), 3, R, R) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1


def test_load_image_converts_modes_and_reports_bad_files(folder, tmp_path):
    images, _ = folder
    for name, mode in [
        ("001.jpg", "L"),
        ("002.jpg", "CMYK"),
        ("003.png", "RGBA"),
        ("004.png", "P"),
    ]:
        pixels, got = load_image(images / name, R)
        assert got == mode and pixels.shape == (3, R, R) and 0 <= pixels.min() <= pixels.max() <= 1
        from_bytes, _ = load_image((images / name).read_bytes(), R)
        assert torch.equal(pixels, from_bytes)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    pixels, _ = load_image(tmp_path / "clear.png", 8)
    assert torch.equal(pixels, torch.ones(3, 8, 8))  # composited on white
    assert load_image(images / "cut.jpg", 8) == (None, "unreadable")
    assert load_image(images / "gone.jpg", 8) == (None, "missing")
    assert load_image(b"not an image", 8) == (None, "unreadable")


def _coco(path, images, pairs):
    ids = {name: i for i, (name, _) in enumerate(pairs)}
    entries = [{"id": i, "file_name": name} for name, i in ids.items()]
    notes = [{"id": 100 + k, "image_id": ids[n], "caption": c} for k, (n, c) in enumerate(pairs)]
    notes += [notes[0], {"id": 999, "image_id": 12345, "caption": "a giraffe"}]  # both dropped
    path.write_text(json.dumps({"images": entries, "annotations": notes}))
    return path


def test_coco_pairs_skip_counts_and_distributed_sampler(folder, tmp_path):
    images, pairs = folder
    data = open_pairs(
        annotations=_coco(tmp_path / "c.json", images, pairs), images=images, resolution=R
    )
    assert isinstance(data, FilePairs) and len(data) == N_GOOD + 2
    got, captions = _all(data)
    _check(got, captions, [c for _, c in pairs[:N_GOOD]])
    assert data.counts() == {
        "duplicate_captions": 1,
        "captions_of_unknown_images": 1,
        "seen": N_GOOD + 2,
        "skipped_missing": 1,
        "skipped_unreadable": 1,
        "skipped_no_image": 0,
        "skipped_no_caption": 0,
    }
    halves = [set(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(range(len(data)))


def _write_table(kind, path, rows, image="image", caption="caption"):
    table = pd.DataFrame(rows, columns=[image, caption])
    if kind == "csv":
        table.to_csv(path, index=False)
    elif kind == "tsv":  # as CC3M's: no quoting, so a caption's quotes are its own
        path.write_text("\n".join([f"{image}\t{caption}", *("\t".join(r) for r in rows)]) + "\n")
    elif kind == "jsonl":
        table.to_json(path, orient="records", lines=True)
    else:
        pytest.importorskip("pyarrow", reason="pyarrow reads Parquet")
        table.to_parquet(path)


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_tables_of_pairs(kind, folder, tmp_path):
    images, pairs = folder
    rows = [(n, f'a "quoted" {c}' if kind == "tsv" else c) for n, c in pairs] + [("003.png", "")]
    columns = {"image": "file", "caption": "text"} if kind == "parquet" else {}
    path = tmp_path / f"pairs.{kind}"
    _write_table(kind, path, rows, **columns)
    data = open_pairs(
        pairs=path, root=images, resolution=R, **{f"{k}_column": v for k, v in columns.items()}
    )
    got, captions = _all(data)
    _check(got, captions, [c for _, c in rows[:N_GOOD]])
    counts = data.counts()
    assert counts["empty_rows"] == 1 and counts["seen"] == N_GOOD + 2
    assert counts["skipped_missing"] == counts["skipped_unreadable"] == 1


def _one_line(error, *words):
    message = str(error.value)
    assert "\n" not in message, message
    for w in words:
        assert w in message, message


def test_too_many_bad_images_are_refused(folder, tmp_path):
    images, pairs = folder
    path = tmp_path / "pairs.csv"
    _write_table("csv", path, pairs)
    with pytest.raises(UserError) as e:  # 2 of 42 images bad: judged whole before the pass
        open_pairs(pairs=path, root=images, resolution=R, max_bad=0.01)
    _one_line(e, "2 of 42 images, named by 42 pairs,", "1 unreadable, 1 missing", "--root")
    empty = tmp_path / "empty"
    empty.mkdir()  # the wrong folder: every image missing
    with pytest.raises(UserError) as e:
        open_pairs(pairs=path, root=empty, resolution=R)
    _one_line(e, "42 of 42 images", "42 missing", "more than 5%", "--root")


def test_where_the_bad_images_sit_decides_nothing(folder, tmp_path):
    """Issue 34's trap: a set 98% good whose few bad images are listed first is read whole
    (in the listed order, as the embedding cache reads it), however small its prefix."""
    images, pairs = folder
    first = [pairs[-2], pairs[-1], *pairs[:-2]] * 3  # 6 of 126 pairs bad (2 of 42 images)
    path = tmp_path / "bad-first.csv"
    _write_table("csv", path, first)
    data = open_pairs(pairs=path, root=images, resolution=R)
    assert len(_all(data)[1]) == 120
    counts = data.counts()
    assert counts["skipped_missing"] == counts["skipped_unreadable"] == 3


def test_the_bad_share_rule_waits_for_evidence():
    """`too_many_bad`: a known pass is judged once whole; a stream by a 99.95% bound."""
    from unclip_repro.data.captions import PROBE, lower_bound, too_many_bad

    assert not too_many_bad(20, 20, 0.05, total=219)  # 20 bad first of 219: not yet
    assert too_many_bad(12, 219, 0.05, total=219) and not too_many_bad(10, 219, 0.05, 219)
    assert not too_many_bad(30, PROBE, 0.05, None)  # 6% of 500: not overwhelming
    assert too_many_bad(PROBE // 10, PROBE, 0.05, None)  # 10% of 500: it is
    assert lower_bound(0, 100) == 0.0 and 0.9 < lower_bound(100, 100) < 1.0


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two img2dataset-style shards: captions in key.txt (shard 0) or key.json (shard 1), one
    sample without a caption, one whose image does not decode; returns (pattern, captions)."""
    root, captions = tmp_path_factory.mktemp("shards"), []
    for s in range(2):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(8):
                key, caption = f"{s:05d}{i:04d}", f"shard {s} sample {i}"
                _, image = _image_bytes(10 * s + i, "RGB")
                text = caption.encode() if s == 0 else json.dumps({"caption": caption}).encode()
                files = {"jpg": image, "txt" if s == 0 else "json": text}
                if (s, i) == (0, 7):
                    files.pop("txt")
                elif (s, i) == (1, 7):
                    files["jpg"] = b"\xff\xd8 broken"
                else:
                    captions.append(caption)
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "{00000..00001}.tar"), captions


def test_shards_stream_pairs_and_count_skips(shards):
    pattern, captions = shards
    data = open_pairs(shards=pattern, resolution=R)
    assert isinstance(data, ShardPairs) and isinstance(data, IterableDataset)
    _check(*_all(data), captions)
    counts = data.counts()
    assert (
        counts["seen"] == 16 and counts["skipped_no_caption"] == counts["skipped_unreadable"] == 1
    )


def test_shards_split_across_workers_and_ranks(shards, monkeypatch):
    pattern, captions = shards
    data = open_pairs(shards=pattern, resolution=R)
    _check(*_all(data, num_workers=2), captions)  # each worker reads one shard
    assert data.counts()["seen"] == 16  # the workers' counts, summed in shared memory
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append([p.caption for p in open_pairs(shards=pattern, resolution=R)])
    assert per_rank[0] and per_rank[1] and not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(captions)
    with pytest.raises(UserError) as e:  # 2 ranks × 2 workers, 2 shards: raised in a worker
        _all(open_pairs(shards=pattern, resolution=R), num_workers=2)
    _one_line(e, "2 shards for 2 ranks × 2 DataLoader workers")


@pytest.mark.parametrize(
    "case, words",
    [
        ("malformed json", ["not valid JSON"]),
        ("caption missing", ["annotations[3]", "'caption'"]),
        ("no annotations list", ["'annotations'", "COCO captions file"]),
        ("missing annotations", ["no such annotations file"]),
        ("missing folder", ["no such image folder"]),
        ("missing columns", ["no column 'image' or 'caption'", "(its columns: file, text)"]),
        ("broken jsonl", ["not a readable jsonl file"]),
        ("unknown suffix", [".csv, .tsv, .jsonl, .parquet"]),
        ("missing table", ["no such pairs file"]),
        ("missing shards", ["1 of 2 shards", "00001.tar"]),
        ("two sources", ["give one source", "--annotations --images --shards"]),
        ("no source", ["give one source", "(got none)"]),
        ("half a source", ["--pairs and --root go together"]),
    ],
)
def test_bad_input_is_one_line(case, words, folder, tmp_path):
    images, pairs = folder
    coco = _coco(tmp_path / "c.json", images, pairs)
    notes = json.loads(coco.read_text())
    bad, args = tmp_path / "bad.json", {"annotations": tmp_path / "bad.json", "images": images}
    if case == "malformed json":
        bad.write_text(coco.read_text()[:-10])
    elif case == "caption missing":
        del notes["annotations"][3]["caption"]
        bad.write_text(json.dumps(notes))
    elif case == "no annotations list":
        bad.write_text(json.dumps({"images": notes["images"]}))
    elif case == "missing folder":
        args = {"annotations": coco, "images": tmp_path / "nowhere"}
    elif case in ("missing columns", "broken jsonl", "unknown suffix"):
        name = {"missing columns": "p.csv", "broken jsonl": "p.jsonl", "unknown suffix": "p.txt"}
        args = {"pairs": tmp_path / name[case], "root": images}
        args["pairs"].write_text(
            "file,text\na.jpg,a cat\n" if case != "broken jsonl" else "{oops\n"
        )
    elif case == "missing table":
        args = {"pairs": tmp_path / "none.csv", "root": images}
    elif case == "missing shards":
        (tmp_path / "00000.tar").write_bytes(b"")
        args = {"shards": str(tmp_path / "{00000..00001}.tar")}
    elif case == "two sources":
        args = {"annotations": coco, "images": images, "shards": "x.tar"}
    elif case == "no source":
        args = {}
    elif case == "half a source":
        args = {"pairs": tmp_path / "p.csv"}
    with pytest.raises(UserError) as e:
        open_pairs(**args, resolution=R)
    _one_line(e, *words)
