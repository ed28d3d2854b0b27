"""Oracle accuracy on clean renders and on noise, and its time per image.

.venv/bin/python bench/oracle.py [--n 1000]   ->  results/oracle.json
"""

import json
import time

import numpy as np

from unclip_repro.cli import Parser, run
from unclip_repro.data import oracle, shapes
from unclip_repro.files import write_json


def main() -> None:
    """Measure and write results/oracle.json."""
    parser = Parser(prog="bench/oracle.py", description=__doc__.splitlines()[0])
    parser.add_argument("--num-captions", type=int, default=1000, help="scenes per resolution")
    parser.add_argument("--out", default="results/oracle.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    report = {"n": args.num_captions}
    for resolution in (32, 64, 128):
        scenes = [shapes.random_scene(rng, split="any") for _ in range(args.num_captions)]
        images = [shapes.render(s, resolution) for s in scenes]
        captions = [shapes.caption(s, rng) for s in scenes]
        t0 = time.perf_counter()
        frame = oracle.score_batch(images, captions)
        seconds = time.perf_counter() - t0
        report[f"accuracy_{resolution}"] = float(frame["all"].mean())
        report[f"ms_per_image_{resolution}"] = round(1000 * seconds / args.num_captions, 3)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(args.num_captions)]
    captions = [
        shapes.caption(shapes.random_scene(rng, split="any")) for _ in range(args.num_captions)
    ]
    report["accuracy_on_noise_32"] = float(oracle.score_batch(noise, captions)["all"].mean())
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    raise SystemExit(run(main))
