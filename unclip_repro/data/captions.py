"""Real image–caption data: COCO captions (a JSON file and an image folder), a table of pairs
(CSV, TSV, JSONL or Parquet: an image path and a caption per row) or WebDataset tar shards as
img2dataset writes them. One reader and one set of validation rules, shared by training and by
the evaluation harness (eval/coco_fid.py):

- malformed annotations (bad JSON, a missing field or column, a missing file or folder) are a
  one-line `UserError`, never a traceback;
- images are decoded with PIL, made RGB (RGBA and transparent palettes composited on white),
  centre-cropped and resized (bicubic) to (3, R, R) floats in [0, 1];
- a missing or unreadable image is skipped (an indexed item is then None, which `collate`
  drops) and counted per reason (`counts()`: this process's DataLoader workers together, since
  the dataset was made). More than `max_bad` of them (default 5%) is a `UserError`: the folder
  or the shards are wrong, not a few files. The one rule (`Tally`, `probe_images`), here and in
  eval/coco_fid.py: a folder is judged before the pass on a random sample of the images its
  pairs name (all of them when there are few), refused only when even the sample's lower
  99.95% bound is above `max_bad`; the pass itself is judged exactly once every pair was read
  (a stream of shards, of unknown length, by the same bound), so where the bad files sit in
  the listing decides nothing.

    data = open_pairs(annotations="captions_train2014.json", images="train2014/", resolution=64)
    loader = DataLoader(data, 64, sampler=DistributedSampler(data), collate_fn=collate)
    data = open_pairs(shards="cc3m/{00000..00331}.tar", resolution=64)  # an IterableDataset
    loader = DataLoader(data, 64, num_workers=4, collate_fn=collate)
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset

from ..errors import UserError

MAX_BAD = 0.05  # more skipped images than this fraction: the folder or the shards are wrong
PROBE = 500  # images judged before a pass (a random sample; every one of a smaller set)
Z_REFUSE = 3.29  # one-sided 99.95%: a share is refused early only on overwhelming evidence
SKIPS = ("missing", "unreadable", "no_image", "no_caption")  # why an item is skipped
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # img2dataset's --output_format suffixes
SOURCES = {
    "coco": ("--annotations", "--images"),
    "table": ("--pairs", "--root"),
    "shards": ("--shards",),
}
FLAGS = [flag for flags in SOURCES.values() for flag in flags]


class Pair(NamedTuple):
    """An image (3, R, R) in [0, 1] and its caption; after `collate`, (B, 3, R, R) and a list."""

    image: torch.Tensor
    caption: str | list[str]


@dataclass
class Listing:
    """What an annotations file lists: (image file, caption) pairs, every image file it names,
    and the entries it dropped, counted by reason."""

    pairs: list[tuple[Path, str]]
    files: list[Path]
    counts: dict[str, int]


# ----------------------------------------------------------------------------- images


def load_image(source: str | Path | bytes, resolution: int) -> tuple[torch.Tensor | None, str]:
    """(3, R, R) float in [0, 1], centre-cropped and resized (PIL bicubic), and the file's mode;
    (None, "missing" | "unreadable") for a file that is missing or not a readable image."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()  # decode now: a truncated file fails here, not later
            mode = image.mode
            if mode == "RGBA" or (mode == "P" and "transparency" in image.info):
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image.convert("RGBA"))
            image = image.convert("RGB")
    except FileNotFoundError:
        return None, "missing"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, "unreadable"
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, R, R) uint8
    return pixels.float() / 255, mode


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted; UserError if there is no such folder."""
    return sorted(p for p in _folder(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)


def _folder(folder: str | Path) -> Path:
    if not Path(folder).is_dir():
        raise UserError(f"no such image folder: {folder}")
    return Path(folder)


def wilson(p: float, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a share p of n trials (z = 1.96: 95%), within [0, 1]."""
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def lower_bound(bad: int, n: int, z: float = Z_REFUSE) -> float:
    """The Wilson score interval's lower end for a share `bad` of `n` (0 for n = 0)."""
    return wilson(bad / n, n, z)[0] if n else 0.0


def too_many_bad(bad: int, seen: int, max_bad: float, total: int | None) -> bool:
    """The bad-input rule: with all `total` items seen, more than `max_bad` of them bad; before
    that (or for a stream of unknown length), at least PROBE seen and even the lower 99.95%
    bound of the share above `max_bad`."""
    if total is not None and seen >= total:
        return bad > max_bad * seen
    return total is None and seen >= PROBE and lower_bound(bad, seen) > max_bad


def _reasons(counts: Counter | dict[str, int]) -> str:
    return ", ".join(f"{n} {k.removeprefix('skipped_')}" for k, n in counts.items() if n)


def probe_images(
    paths: list[Path], max_bad: float, hint: str, pairs: int | None = None, seed: int = 0
) -> None:
    """Judge a folder before a pass: decode a seeded random PROBE of the unique images in
    `paths` (all of them when there are fewer) and raise a UserError when even the lower 99.95%
    bound of their bad share is above `max_bad` (exactly: when it is all of them). `pairs`,
    the number of pairs that name these images, goes into the message."""
    unique = list(dict.fromkeys(paths))
    rng = np.random.default_rng(seed)
    sample = (
        unique
        if len(unique) <= PROBE
        else [unique[i] for i in rng.permutation(len(unique))[:PROBE]]
    )
    reasons: Counter[str] = Counter()
    bad = []
    for path in sample:
        image, mode = load_image(path, 8)  # decoding is the test; the size does not matter
        if image is None:
            reasons[mode] += 1
            bad.append(path)
    whole = len(sample) == len(unique)
    refuse = bad and (
        len(bad) > max_bad * len(sample) if whole else lower_bound(len(bad), len(sample)) > max_bad
    )
    if refuse:
        checked = (
            f"{len(sample)} images" if whole else f"a random {len(sample)} of {len(unique)} images"
        )
        named = f", named by {pairs} pairs," if pairs is not None else ""
        raise UserError(
            f"{len(bad)} of {checked}{named} are missing or unreadable ({_reasons(reasons)}; "
            f"first: {bad[0].name}), more than {max_bad:.0%}: {hint}"
        )


class Tally:
    """Items seen and skipped (per reason in SKIPS), in shared memory so that DataLoader workers
    add to one count; `add` raises a UserError when `too_many_bad` says so (`total`: the number
    of items a pass reads, None for a stream)."""

    def __init__(self, max_bad: float, hint: str, total: int | None = None) -> None:
        self.max_bad, self.hint, self.total = max_bad, hint, total
        # seen, then one slot per reason; a spawn-context lock also travels to spawned workers
        self._n = multiprocessing.get_context("spawn").Array("q", 1 + len(SKIPS))

    def add(self, name: str, skip: str | None = None) -> None:
        """Count one item: used (skip None) or skipped for `skip`, one of SKIPS."""
        with self._n.get_lock():
            self._n[0] += 1
            if skip is not None:
                self._n[1 + SKIPS.index(skip)] += 1
            counts = self.counts()
        seen, bad = counts.pop("seen"), sum(counts.values())
        if (skip is not None or seen == self.total) and too_many_bad(
            bad, seen, self.max_bad, self.total
        ):
            pass_ = "in one pass" if self.total is not None and seen >= self.total else "so far"
            raise UserError(
                f"{bad} of {seen} pairs read {pass_} had no usable image ({_reasons(counts)}; "
                f"last: {name}), more than {self.max_bad:.0%}: {self.hint}"
            )

    def counts(self) -> dict[str, int]:
        """{"seen": n, "skipped_missing": n, …} over every worker of this process, for logging."""
        n = self._n[:]
        return {"seen": n[0]} | {f"skipped_{k}": v for k, v in zip(SKIPS, n[1:], strict=True)}


# ----------------------------------------------------------------------------- annotations


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no such annotations file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise UserError(
                f"{path} has no {key!r} list: is it a COCO captions file (captions_val2014.json)?"
            )
    return data


def _field(entry: object, key: str, kind: type, where: str) -> object:
    if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
        raise UserError(f"{where} lacks {key!r} (a {kind.__name__}): {str(entry)[:80]}")
    return entry[key]


def load_coco(annotations: str | Path, images: str | Path) -> Listing:
    """The (image, caption) pairs of a COCO captions file; duplicates and captions of unknown
    images are dropped and counted, malformed entries are errors."""
    path, folder = Path(annotations), _folder(images)
    data = _read_json(path)
    files: dict[int, str] = {}
    counts: Counter[str] = Counter()
    for i, entry in enumerate(data["images"]):
        image_id = _field(entry, "id", int, f"{path}: images[{i}]")
        name = _field(entry, "file_name", str, f"{path}: images[{i}]")
        if image_id in files:
            if files[image_id] != name:
                raise UserError(
                    f"{path}: image id {image_id} names two files ({files[image_id]}, {name})"
                )
            counts["duplicate_images"] += 1
            continue
        files[image_id] = name
    pairs, seen = [], set()
    for i, entry in enumerate(data["annotations"]):
        image_id = _field(entry, "image_id", int, f"{path}: annotations[{i}]")
        text = " ".join(str(_field(entry, "caption", str, f"{path}: annotations[{i}]")).split())
        key = entry.get("id", (image_id, text))
        if key in seen:
            counts["duplicate_captions"] += 1
        elif image_id not in files:
            counts["captions_of_unknown_images"] += 1
        elif text:
            seen.add(key)
            pairs.append((folder / files[image_id], text))
    if not pairs:
        raise UserError(f"{path} holds no usable captions")
    return Listing(pairs, [folder / files[k] for k in sorted(files)], dict(counts))


def read_table(
    path: str | Path, columns: tuple[str, ...], what: str = "pairs file"
) -> pd.DataFrame:
    """A CSV, TSV, JSONL or Parquet file (by its suffix); a one-line UserError when it is
    missing, unreadable or lacks one of `columns`."""
    path = Path(path)
    readers = {
        ".csv": lambda: pd.read_csv(path, dtype=str, keep_default_na=False),
        ".tsv": lambda: pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
        ),
        ".jsonl": lambda: pd.read_json(path, lines=True, dtype=False),
        ".parquet": lambda: pd.read_parquet(path),
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: a {what} is one of {', '.join(readers)} (by its suffix)")
    try:
        table = reader()
    except FileNotFoundError:
        raise UserError(f"no such {what}: {path}") from None
    except ImportError as e:
        raise UserError(
            f"reading {path} needs {e.name or 'pyarrow'} (pip install pyarrow)"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable {path.suffix[1:]} file ({message})") from None
    missing = [repr(c) for c in columns if c not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns))
        raise UserError(f"{path} has no column {' or '.join(missing)} (its columns: {found})")
    return table


def load_table(
    pairs: str | Path, root: str | Path, image: str = "image", caption: str = "caption"
) -> Listing:
    """The (image, caption) rows of a table, image paths relative to `root`; rows with an empty
    image or caption are dropped and counted."""
    folder = _folder(root)
    table = read_table(pairs, (image, caption))
    rows, empty = [], 0
    for name, text in zip(table[image], table[caption], strict=True):
        name = "" if pd.isna(name) else str(name).strip()
        text = "" if pd.isna(text) else " ".join(str(text).split())
        if name and text:
            rows.append((folder / name, text))
        else:
            empty += 1
    if not rows:
        raise UserError(
            f"{pairs} holds no usable pairs ({empty} rows with an empty {image!r} or {caption!r})"
        )
    files = list(dict.fromkeys(path for path, _ in rows))
    return Listing(rows, files, {"empty_rows": empty} if empty else {})


# ----------------------------------------------------------------------------- datasets


class FilePairs(Dataset):
    """(image, caption) pairs of image files (COCO or a table), indexable so that
    DistributedSampler works; item i is a Pair, or None when its image was skipped (`collate`
    drops it)."""

    def __init__(self, listing: Listing, resolution: int, max_bad: float, hint: str) -> None:
        self.listing, self.resolution = listing, resolution
        paths = [path for path, _ in listing.pairs]
        probe_images(paths, max_bad, hint, pairs=len(paths))
        self.tally = Tally(max_bad, hint, len(listing.pairs))

    def __len__(self) -> int:
        return len(self.listing.pairs)

    def __getitem__(self, i: int) -> Pair | None:
        path, caption = self.listing.pairs[i]
        image, mode = load_image(path, self.resolution)
        self.tally.add(str(path), None if image is not None else mode)
        return None if image is None else Pair(image, caption)

    def counts(self) -> dict[str, int]:
        """Dropped annotation entries and skipped images so far, by reason, for logging."""
        return self.listing.counts | self.tally.counts()


def shard_list(pattern: str) -> list[str]:
    """The shards of a brace pattern such as data/{00000..00099}.tar; local ones must exist."""
    urls = wds.shardlists.expand_urls(pattern)
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if not urls or missing:
        first = f" (first missing: {missing[0]})" if missing else ""
        raise UserError(f"{len(missing)} of {len(urls)} shards of {pattern} are missing{first}")
    return urls


def _damaged_shard(exn: Exception) -> bool:
    """webdataset's error handler: say which shard is damaged (one line) and read on."""
    url = next((a for a in exn.args[1:] if isinstance(a, str)), "a shard")
    warnings.warn(f"skipped the rest of {url}: {exn.args[0] if exn.args else exn}", stacklevel=1)
    return True


def _shard_caption(sample: dict) -> str:
    """img2dataset's caption: key.txt, else the "caption" of key.json ("" when neither)."""
    if "txt" in sample:
        return " ".join(sample["txt"].decode("utf-8", "replace").split())
    try:
        text = json.loads(sample.get("json", b"{}")).get("caption")
    except (ValueError, AttributeError):  # not JSON, or not an object
        return ""
    return " ".join(text.split()) if isinstance(text, str) else ""


class ShardPairs(IterableDataset):
    """(image, caption) pairs streamed from WebDataset tar shards (img2dataset's key.jpg with
    key.txt and/or key.json), each shard read by one DataLoader worker of one rank (of every
    rank, with `by_node` False: a caller that gives each rank its own shards)."""

    def __init__(
        self, pattern: str, resolution: int, max_bad: float = MAX_BAD, by_node: bool = True
    ) -> None:
        self.urls, self.resolution, self.by_node = shard_list(pattern), resolution, by_node
        self.tally = Tally(max_bad, f"are {pattern} img2dataset shards (key.jpg + key.txt)?")
        self.shards = wds.SimpleShardList(self.urls)  # its seed: the order (`set_order`)
        self.pipeline = wds.DataPipeline(
            self.shards,
            # rank r of R (torch.distributed or RANK/WORLD_SIZE): shards r, r + R, …
            *([wds.split_by_node] if by_node else []),
            wds.split_by_worker,  # then DataLoader worker w of W: every W-th of those
            wds.tarfile_to_samples(handler=_damaged_shard),
        )

    def set_order(self, seed: int | None) -> None:
        """Read the shards in an order shuffled by `seed` (None: as listed) from the next
        iteration on; every rank must use the same seed."""
        self.shards.seed = seed

    def __iter__(self) -> Iterator[Pair]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        world = world if self.by_node else 1
        if len(self.urls) < world * workers:
            raise UserError(
                f"{len(self.urls)} shards for {world} ranks × {workers} DataLoader workers: "
                "every worker needs a shard (fewer workers, or more shards)"
            )
        for sample in self.pipeline:
            name = f"{sample['__url__']}:{sample['__key__']}"
            data = next((sample[k] for k in SHARD_IMAGE_KEYS if k in sample), None)
            caption = _shard_caption(sample)
            skip = "no_image" if data is None else "no_caption" if not caption else None
            image = None
            if skip is None:
                image, mode = load_image(data, self.resolution)
                skip = None if image is not None else mode
            self.tally.add(name, skip)
            if image is not None:
                yield Pair(image, caption)

    def counts(self) -> dict[str, int]:
        """Samples seen and skipped so far by this process's workers, by reason, for logging."""
        return self.tally.counts()


def collate(batch: list[Pair | None]) -> Pair | None:
    """A batch of either dataset's items, skipped ones (None) dropped: images (B, 3, R, R) and
    a list of B captions; None when every item of the batch was skipped."""
    kept = [p for p in batch if p is not None]
    if not kept:
        return None
    return Pair(torch.stack([p.image for p in kept]), [p.caption for p in kept])


# ----------------------------------------------------------------------------- the factory


def open_pairs(
    *,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    pairs: str | Path | None = None,
    root: str | Path | None = None,
    shards: str | None = None,
    resolution: int,
    max_bad: float = MAX_BAD,
    image_column: str = "image",
    caption_column: str = "caption",
) -> FilePairs | ShardPairs:
    """The dataset of one source, named as the CLI names it: --annotations and --images (COCO),
    --pairs and --root (a table), or --shards; a one-line UserError for any other combination."""
    values = [annotations, images, pairs, root, shards]
    given = [flag for flag, value in zip(FLAGS, values, strict=True) if value is not None]
    kinds = {flag: kind for kind, flags in SOURCES.items() for flag in flags}
    if len({kinds[flag] for flag in given}) != 1:
        raise UserError(
            "give one source of image-caption pairs: --annotations and --images, --pairs and "
            f"--root, or --shards (got {' '.join(given) or 'none'})"
        )
    kind = kinds[given[0]]
    if len(given) < len(SOURCES[kind]):
        raise UserError(f"{' and '.join(SOURCES[kind])} go together (got only {given[0]})")
    if resolution < 1 or not 0 <= max_bad <= 1:
        raise UserError(f"need resolution ≥ 1 and 0 ≤ max_bad ≤ 1, got {resolution}, {max_bad}")
    if kind == "shards":
        return ShardPairs(str(shards), resolution, max_bad)
    if kind == "coco":
        hint = "is --images the folder the annotations describe?"
        return FilePairs(load_coco(annotations, images), resolution, max_bad, hint)
    hint = "is --root the folder that the --pairs paths are relative to?"
    listing = load_table(pairs, root, image_column, caption_column)
    return FilePairs(listing, resolution, max_bad, hint)
