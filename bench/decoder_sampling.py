"""How do the decoder's sampling settings (η, guidance, steps) change what the oracle sees?

    .venv/bin/python bench/decoder_sampling.py --decoder runs/recipe/v/decoder
    .venv/bin/python bench/decoder_sampling.py --decoder runs/shapes/decoder --setting 0,3,25

`--num-captions` (48) seeded single-object scenes from the training pairs; the decoder is given
each caption and the true z_i of its render (by the CLIP it was trained on: `clip/` beside it,
or `--clip`; the GLIDE baseline the caption alone), so only sampling varies between rows.
`--condition caption` or `image` gives the decoder only that (the other dropped, as in
training's conditioning dropout). `--confusion` also prints, per setting, which shape the
oracle reads for each shape (and size) asked for. `--upsample` also scores the images after
the upsamplers beside the decoder (`upsampler1/`, `upsampler2/`), at the stack's full
resolution: what a user of the pipeline sees.
"""

from pathlib import Path

import pandas as pd
import torch

from eval.metrics import scene_set
from unclip_repro.cli import Parser, run
from unclip_repro.components import load_component
from unclip_repro.data import oracle, shapes

SETTINGS = (  # (η, guidance, steps)
    (0.0, 3.0, 25),
    (0.0, 3.0, 50),
    (0.0, 2.0, 25),
    (0.0, 5.0, 25),
    (1.0, 3.0, 25),
    (1.0, 3.0, 50),
    (1.0, 2.0, 50),
    (1.0, 3.0, 100),
)


def main() -> None:
    """Print shape, position and all-attributes accuracy per (η, guidance, steps)."""
    parser = Parser(prog="bench/decoder_sampling.py", description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", required=True, help="a decoder run or checkpoint folder")
    parser.add_argument("--clip", help="CLIP run or checkpoint folder (default: clip/ beside it)")
    parser.add_argument("--num-captions", type=int, default=48)
    parser.add_argument(
        "--setting", action="append", help="η,guidance,steps (repeatable; default: a sweep)"
    )
    parser.add_argument("--condition", choices=["both", "caption", "image"], default="both")
    parser.add_argument("--confusion", action="store_true", help="shape asked x shape drawn")
    parser.add_argument("--upsample", action="store_true", help="score after the upsamplers too")
    args = parser.parse_args()
    settings = [tuple(float(x) for x in s.split(",")) for s in args.setting or []] or SETTINGS
    decoder = load_component(args.decoder)
    upsamplers = [
        load_component(Path(args.decoder).parent / name)
        for name in ("upsampler1", "upsampler2")
        if args.upsample
    ]
    clip = load_component(args.clip or Path(args.decoder).parent / "clip")
    scenes, _ = scene_set("generation", args.num_captions, 3, 1, "train")
    captions = [shapes.caption(s) for s in scenes]
    images = shapes.render_batch(scenes, decoder.resolution)
    text, z_i = clip.encode_text(captions), clip.encode_image(images)
    z = z_i if decoder.cfg.image_embedding and args.condition != "caption" else None
    given = None if args.condition == "image" else text  # GLIDE: the caption alone
    for eta, guidance, steps in settings:
        steps = int(steps)
        generator = torch.Generator().manual_seed(0)
        out = decoder.sample(given, z, guidance, steps, eta, generator=generator)
        report(f"η {eta:g}, guidance {guidance:g}, {steps} steps", out, scenes, args.confusion)
        if upsamplers:
            for upsampler in upsamplers:
                out = upsampler.sample(out, generator=generator)
            report(f"  upsampled to {out.shape[-1]} px", out, scenes, args.confusion)


def report(label: str, images: torch.Tensor, scenes: list[shapes.Scene], confusion: bool) -> None:
    """Print the oracle's shape, position and all-attributes accuracy of images drawn for
    single-object scenes; with `confusion`, the shape read for each (size, shape) asked."""
    captions = [shapes.caption(s) for s in scenes]
    r = oracle.score_batch(images, captions).astype(float).mean()
    print(
        f"{label}: shape {r['shape']:.0%}, position {r['position']:.0%}, all {r['all']:.0%}",
        flush=True,
    )
    if confusion:
        drawn = [next(iter(oracle.detect(image)), None) for image in images]
        asked = pd.DataFrame([(s.objects[0].size, s.objects[0].shape) for s in scenes])
        found = pd.Series([d.shape if d else "none" for d in drawn], name="drawn")
        table = pd.crosstab([asked[0].rename("size"), asked[1].rename("asked")], found)
        print(table.to_string(), flush=True)


if __name__ == "__main__":
    raise SystemExit(run(main))
