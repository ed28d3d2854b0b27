"""Oracle accuracy on clean renders and on noise, and its time per image: does the judge of
every generation table read the truth right, and never read it into noise?

    python -m eval.oracle_check                 # -> results/oracle.json
    python -m eval.oracle_check --num-captions 100 --out /tmp/oracle

For `--num-captions` random scenes (any colour–shape pair) at 32, 64 and 128 px, the share of
clean renders whose every stated attribute the oracle (`data/oracle.py`) finds right, and its
milliseconds per image; and the share of uniform-noise images it passes as right for a
random caption (32 px). (Moved here from bench/oracle.py, which wrote the same file.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from unclip_repro.cli import Parser, positive, run
from unclip_repro.data import oracle, shapes
from unclip_repro.files import write_json

COMMAND = "python -m eval.oracle_check"


def measure(n: int) -> dict[str, float]:
    """The report: accuracy and ms per image at each resolution, accuracy on noise."""
    rng = np.random.default_rng(0)
    report: dict[str, float] = {"n": n}
    for resolution in (32, 64, 128):
        scenes = [shapes.random_scene(rng, split="any") for _ in range(n)]
        images = [shapes.render(s, resolution) for s in scenes]
        captions = [shapes.caption(s, rng) for s in scenes]
        t0 = time.perf_counter()
        frame = oracle.score_batch(images, captions)
        seconds = time.perf_counter() - t0
        report[f"accuracy_{resolution}"] = float(frame["all"].mean())
        report[f"ms_per_image_{resolution}"] = round(1000 * seconds / n, 3)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
    captions = [shapes.caption(shapes.random_scene(rng, split="any")) for _ in range(n)]
    report["accuracy_on_noise_32"] = float(oracle.score_batch(noise, captions)["all"].mean())
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = Parser(prog=COMMAND, description=__doc__.splitlines()[0])
    p.add_argument("--num-captions", type=int, default=1000, help="scenes per resolution")
    p.add_argument("--out", default="results", help="folder for oracle.json")

    def body() -> None:
        args = p.parse_args(argv)
        positive(args.num_captions, "--num-captions")
        report = measure(args.num_captions)
        write_json(Path(args.out) / "oracle.json", report)
        print(json.dumps(report, indent=2))

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
