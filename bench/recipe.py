"""Train a recipe (a TOML override file) and score it: one command per experiment.

    python bench/recipe.py bench/recipes/decoder-from-glide.toml          # -> runs/recipe/NAME
    python bench/recipe.py bench/recipes/glide-seed1.toml --clip runs/fresh/shapes/clip
    python bench/recipe.py bench/recipes/clip.toml --set train.clip.seed=1 --out runs/probe/s1

A recipe file is an override file (`config.read_overrides`: tables are preset paths,
`[train.glide]` / `seed = 1`, `[decoder]` / `guidance = 6`) with one more table, `[recipe]`,
that this runner reads itself:

    [recipe]
    preset = "shapes"           # the (Shapes) preset the overrides change
    stages = ["glide"]          # trained in this order into OUT/<stage>
    score = ["generation"]      # generation (oracle accuracy), clip (linear probe), psnr
    methods = ["glide"]         # of eval.metrics.METHODS (default: those eval.generation runs)
    splits = ["train"]          # caption sets: heldout, train
    objects = [1, 2]            # objects per scene
    num_captions = 64           # captions per set (psnr: renders)
    seed = 0                    # of the captions and the sampling noise
    confusion = false           # per single-object set: the shape read for each shape asked
    posthoc = [0.05, 0.15]      # generation scored again with the last stage's post-hoc EMA of
                                # each width (EDM2; the stage trains with ema_snapshot_every)

Each stage trains with `train.train(override(preset, overrides), stage, OUT/stage)`,
resuming the run already there (stop it and rerun the same command to go on; a run made with
other settings is refused in one line). A stage whose training settings name an `init` (the
Shapes decoder's: "glide") starts from that component: an earlier stage of this recipe, else
the shipped one of that name (`train.glide.init = "glide"`: fine-tune the shipped GLIDE), or a
folder. Stages after CLIP train on the shipped CLIP of the preset, the recipe's own (`clip` in
`stages`) or `--clip DIR`.

Scores, of the stack (each component the recipe trained, the shipped ones of the preset that
were trained on its CLIP for the rest; the recipe's sampling settings applied to all):
- generation: the oracle accuracy of `eval.generation.measure`, with 95% Wilson intervals;
- clip: `eval.clip_report.linear_probe` of z_i and its zero-shot `shapes_report`;
- psnr: each upsampler the recipe trains (or the stack's), on `num_captions` fresh renders
  area-downsampled to its input, against the truth, beside bicubic interpolation.
Writes OUT/report.md (the recipe file, the command, the settings changed, training time, the
scores) and OUT/report.csv (one row per score). `--set KEY=VALUE` changes a setting after the
file (`recipe.num_captions=200` too), `--num-captions N` is `--set recipe.num_captions=N`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from eval import generation
from eval.clip_report import linear_probe, shapes_report
from eval.metrics import (
    METHODS,
    SAMPLING_KEYS,
    available,
    machine,
    psnr,
    require_methods,
    set_sampling,
)
from unclip_repro import checkpoint, posthoc_ema
from unclip_repro.cli import Parser, UserError, positive, run, writable
from unclip_repro.components import PRIORS, STAGES, load_component
from unclip_repro.config import Preset, get_preset, override, parse_assignment, read_overrides
from unclip_repro.data.shapes import sample_batch
from unclip_repro.files import write_text
from unclip_repro.pipeline import UnCLIP
from unclip_repro.prior import CaptionOnlyPrior, TextEmbeddingPrior
from unclip_repro.train import check_trainable, train

SCORES = ("generation", "clip", "psnr")
PROBED = ("colour", "shape", "size", "position", "heldout_shape")  # linear_probe's accuracies
COLUMNS = ["score", "method", "objects", "split", "n", "measure", "value", "lo", "hi"]
UPSAMPLERS = ("upsampler1", "upsampler2")


@dataclass
class Recipe:
    """The `[recipe]` table: what to train and how to score it (the module's docstring)."""

    preset: str = "shapes"
    stages: list[str] = field(default_factory=list)
    score: list[str] = field(default_factory=lambda: ["generation"])
    methods: list[str] = field(default_factory=list)  # empty: eval.generation's default
    splits: list[str] = field(default_factory=lambda: ["heldout", "train"])
    objects: list[int] = field(default_factory=lambda: [1, 2])
    num_captions: int = 64
    seed: int = 0
    confusion: bool = False
    posthoc: list[float] = field(default_factory=list)  # σ_rel of post-hoc EMAs to score

    def check(self) -> None:
        """UserError naming the first value this runner cannot take."""
        checks = {
            "stages": (self.stages, list(STAGES)),
            "score": (self.score, SCORES),
            "methods": (self.methods, list(METHODS)),
            "splits": (self.splits, ["heldout", "train"]),
            "objects": (self.objects, [1, 2]),
        }
        for name, (values, choices) in checks.items():
            if bad := [v for v in values if v not in choices]:
                raise UserError(
                    f"recipe.{name}: unknown {bad[0]!r}; choose from: "
                    f"{', '.join(map(str, choices))}"
                )
        if len(set(self.stages)) < len(self.stages):
            raise UserError(f"recipe.stages names a stage twice: {self.stages}")
        positive(self.num_captions, "recipe.num_captions")
        for sigma in self.posthoc:
            posthoc_ema.check_sigma_rel(sigma)
        if self.posthoc and ("generation" not in self.score or not self.stages):
            raise UserError("recipe.posthoc scores generation with a stage the recipe trains")


def split_recipe(changes: dict[str, Any]) -> tuple[Recipe, dict[str, Any]]:
    """The `recipe.*` keys of `changes` as a Recipe, and the rest (preset overrides)."""
    recipe, rest = Recipe(), {}
    names = [f.name for f in dataclasses.fields(Recipe)]
    for key, value in changes.items():
        if not key.startswith("recipe."):
            rest[key] = value
            continue
        name = key.removeprefix("recipe.")
        if name not in names:
            near = difflib.get_close_matches(name, names, n=3)
            hint = (
                f"did you mean {', '.join(near)}?" if near else f"choose from: {', '.join(names)}"
            )
            raise UserError(f"unknown setting {key!r}; {hint}")
        default = getattr(recipe, name)
        if type(value) is not type(default):
            raise UserError(f"{key} takes a {type(default).__name__}, got {value!r}")
        setattr(recipe, name, value)
    recipe.check()
    return recipe, rest


def shown(path: Path | str | None) -> str:
    """`path` relative to the working folder where it is inside it (the report's paths)."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve_init(name: str | None, stage: str, earlier: list[str], out: Path, preset: str):
    """The folder a stage's `init` names: an earlier stage of the recipe, else the shipped
    component of that name, else a folder; None for no init."""
    if not name:
        return None
    if name in earlier:
        return out / name
    if name in STAGES:
        folder = checkpoint.shipped(preset) / name
        if not checkpoint.exists(folder):
            raise UserError(
                f"train.{stage}.init = {name!r}: no earlier stage of this recipe and no shipped "
                f"{name} of preset {preset!r}; train it first (add it to recipe.stages)"
            )
        return folder
    return Path(name)


def clip_folder(recipe: Recipe, out: Path, given: str | None) -> Path:
    """The CLIP the stages after CLIP train on and the stack is scored with."""
    if "clip" in recipe.stages:
        if given:
            raise UserError("this recipe trains its own CLIP: --clip does not go with it")
        return out / "clip"
    folder = Path(given) if given else checkpoint.shipped(recipe.preset) / "clip"
    if not checkpoint.exists(folder):
        raise UserError(
            f"no CLIP in {folder}: preset {recipe.preset!r} ships none; add 'clip' to "
            "recipe.stages or pass --clip DIR"
        )
    return folder


def train_stages(recipe: Recipe, preset: Preset, out: Path, clip: Path | None) -> list[dict]:
    """Train (or resume) each stage in order; one row per stage for the report."""
    rows = []
    for i, stage in enumerate(recipe.stages):
        run_dir, spec = out / stage, STAGES[stage]
        resume = checkpoint.exists(run_dir)
        start = checkpoint.load_config(run_dir).get("step", 0) if resume else 0
        init = None
        if not resume:
            name = preset.train[stage].init
            init = resolve_init(name, stage, recipe.stages[:i], out, recipe.preset)
        steps = preset.train[stage].steps
        print(f"[{i + 1}/{len(recipe.stages)}] {stage}: step {start} of {steps} -> {run_dir}")
        result = train(
            preset, stage, run_dir, resume=resume, init=init, clip=clip if spec.on_clip else None
        )
        saved = checkpoint.load_config(run_dir)
        rows.append(
            {
                "stage": stage,
                "steps": result.step,
                "steps this sitting": result.step - start,
                "s this sitting": round(result.seconds, 1),
                "s in all": saved.get("train_seconds"),
                "started from": "resumed" if resume else shown(init) or "scratch",
                "CLIP": shown(clip) if spec.on_clip else "",
            }
        )
    return rows


def stack(recipe: Recipe, out: Path, clip: Path | None) -> dict[str, torch.nn.Module]:
    """Each component the recipe trained, and for the rest the shipped ones of its preset that
    were trained on `clip` (or on no CLIP: the upsamplers), loaded; with `clip` None, only
    those that need no CLIP."""
    shipped = checkpoint.shipped(recipe.preset)
    clip_id = checkpoint.identity(clip) if clip else None
    folders = {"clip": clip} if clip else {}
    for name, spec in STAGES.items():
        folder = out / name if name in recipe.stages else shipped / name
        if name == "clip" or not checkpoint.exists(folder) or (spec.on_clip and not clip):
            continue
        trained_on = checkpoint.load_config(folder).get("clip", {}).get("sha256")
        if name in recipe.stages or not spec.on_clip or trained_on == clip_id:
            folders[name] = folder
    return {name: load_component(folder) for name, folder in folders.items()}


def model_of(modules: dict[str, torch.nn.Module]) -> UnCLIP:
    """The stack as an UnCLIP (without a decoder, GLIDE fills its slot: glide only)."""
    decoder = modules.get("decoder", modules.get("glide"))
    if decoder is None:
        raise UserError("the stack has no decoder nor GLIDE trained on this CLIP to score")
    priors = {"text": TextEmbeddingPrior(), "none": CaptionOnlyPrior()}
    priors |= {kind: modules[name] for kind, name in PRIORS.items() if name in modules}
    ups = [modules[n] for n in UPSAMPLERS if n in modules]
    return UnCLIP(modules["clip"], decoder, priors, ups, modules.get("glide"))


def score_generation(recipe: Recipe, model: UnCLIP, has_decoder: bool):  # noqa: ANN201
    """eval.generation's table of the stack (and its confusion tables)."""
    default = (*generation.CAPTION_METHODS, "true")
    methods = recipe.methods or [m for m in default if has_decoder or m == "glide"]
    if recipe.methods:
        without = [m for m in methods if m not in ("glide", "real")]
        if without and not has_decoder:
            raise UserError(f"methods {', '.join(without)} need a decoder trained on this CLIP")
        require_methods(model, methods, "the stack")
    elif not available(model, methods):
        raise UserError("the stack can run none of eval.generation's methods")
    confusions = {} if recipe.confusion else None
    table, _ = generation.measure(
        model,
        recipe.num_captions,
        recipe.seed,
        splits=tuple(recipe.splits),
        methods=tuple(methods),
        objects=tuple(recipe.objects),
        confusions=confusions,
    )
    return table, confusions


def score_clip(clip: torch.nn.Module) -> dict[str, dict[str, float]]:
    """The linear probe of z_i and the zero-shot report on held-out pairs."""
    size = clip.image_size
    return {"probe": linear_probe(clip, size), "zero-shot": shapes_report(clip, size)}


@torch.no_grad()
def score_psnr(recipe: Recipe, modules: dict[str, torch.nn.Module]) -> list[dict]:
    """PSNR of each upsampler the recipe trains (else the stack's) and of bicubic."""
    names = [n for n in UPSAMPLERS if n in recipe.stages] or [n for n in UPSAMPLERS if n in modules]
    if not names:
        raise UserError("score psnr: no upsampler in the stack")
    rows = []
    for name in names:
        up = modules[name]
        truth, _ = sample_batch(np.random.default_rng(12345), recipe.num_captions, up.cfg.high)
        low = F.interpolate(truth, size=(up.cfg.low, up.cfg.low), mode="area")
        bicubic = F.interpolate(low, size=(up.cfg.high, up.cfg.high), mode="bicubic").clamp(0, 1)
        images = up.sample(low, generator=torch.Generator().manual_seed(recipe.seed))
        for method, x in ((name, images), ("bicubic", bicubic)):
            split = f"{up.cfg.low}→{up.cfg.high} px"
            value = float(psnr(x, truth).mean())
            rows.append({"score": "psnr", "method": method, "split": split, "n": len(truth),
                         "measure": "PSNR (dB)", "value": value})  # fmt: skip
    return rows


def scored(value: float, n: int) -> dict[str, float]:
    """A proportion of n with its 95% Wilson interval: report.csv's value, n, lo, hi."""
    lo, hi = generation.interval(value, n)
    return {"n": n, "value": value, "lo": lo, "hi": hi}


def generation_rows(table: pd.DataFrame) -> list[dict]:
    """eval.generation's table in the long form of report.csv, with 95% intervals."""
    return [
        {"score": "generation", "method": r["method"], "objects": r["objects"],
         "split": r["split"], "measure": measure} | scored(r[measure], r["n"])
        for r in table.to_dict("records")
        for measure in generation.ATTRIBUTES + generation.FACTORS
        if pd.notna(r.get(measure))
    ]  # fmt: skip


def clip_rows(report: dict[str, dict[str, float]]) -> list[dict]:
    """The probe (with 95% intervals over its test scenes) and the zero-shot accuracies."""
    probe, zero = report["probe"], report["zero-shot"]
    rows = [
        {"score": "clip", "method": "linear probe", "measure": m}
        | scored(probe[m], probe["n_test"])
        for m in PROBED
    ]
    zero_shot = {"score": "clip", "method": "zero-shot", "split": zero["split"], "n": zero["n"]}
    floats = {m: value for m, value in zero.items() if isinstance(value, float)}
    return rows + [zero_shot | {"measure": m, "value": value} for m, value in floats.items()]


def code_version() -> str:
    """The commit of the code that ran, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + (" with uncommitted changes" if dirty else "")


def generation_section(table: pd.DataFrame, confusions: Any, command: str, deeper: str) -> list:
    """eval.generation's report of `table` as lines of report.md, its headings `deeper`."""
    text = generation.to_markdown(table, command, intervals=True, confusions=confusions)
    return [deeper + line if line.startswith("#") else line for line in text.splitlines()] + [""]


def report_md(
    path: Path,
    command: str,
    preset: Preset,
    recipe: Recipe,
    trained: list[dict],
    scores: dict[str, Any],
    seconds: float,
) -> str:
    """OUT/report.md."""
    settings = {f"recipe.{k}": v for k, v in dataclasses.asdict(recipe).items()}
    settings |= preset.overrides
    lines = [
        f"# Recipe `{path}`",
        "",
        f"`{command}`",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; code {code_version()}; "
        f"{machine()}; {seconds:.0f} s this sitting.",
        "",
        "## The recipe file",
        "",
        "```toml",
        path.read_text().strip(),
        "```",
        "",
        f"## Settings (preset `{preset.name}`; the runner's and every override, `--set` last)",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| `{k}` | `{v}` |" for k, v in settings.items()),
        "",
        "## Training",
        "",
        pd.DataFrame(trained).to_markdown(index=False) if trained else "Nothing trained.",
        "",
    ]
    if "generation" in scores:
        table, confusions = scores["generation"]
        lines += generation_section(table, confusions, command, "#")
    for sigma, stage, step, table, confusions in scores.get("posthoc", []):
        lines += [
            f"## Post-hoc EMA σ_rel {sigma}: {stage} after {step} steps, the rest as above",
            "",
            f"`python -m unclip_repro posthoc-ema --run OUT/{stage} --sigma-rel {sigma} "
            f"--out DIR` writes these weights as a component (EDM2's post-hoc EMA, built from "
            f"the snapshots of `train.{stage}.ema_sigma_rels`); beside the `ema_decay` average "
            "the sections above score.",
            "",
        ]
        lines += generation_section(table, confusions, command, "##")
    if "clip" in scores:
        probe, zero = scores["clip"]["probe"], scores["clip"]["zero-shot"]
        cells = [scored(probe[c], probe["n_test"]) for c in PROBED]
        cells = [f"{c['value']:.1%} ({c['lo']:.0%}–{c['hi']:.0%})" for c in cells]
        lines += [
            "## CLIP: linear probe of z_i (`eval.clip_report.linear_probe`), 95% intervals",
            "",
            "| " + " | ".join(PROBED) + " |",
            "|" + "---|" * len(PROBED),
            "| " + " | ".join(cells) + " |",
            "",
            f"Fit on {probe['n_fit']} single-object training-pair scenes, scored on "
            f"{probe['n_test']} fresh ones and {probe['n_test']} of held-out pairs. Zero-shot on "
            f"{zero['n']} {zero['split']} scenes (`shapes_report`): "
            + ", ".join(f"{k} {v:.1%}" for k, v in zero.items() if isinstance(v, float)),
            "",
        ]
    if "psnr" in scores:
        frame = pd.DataFrame(scores["psnr"])[["method", "split", "n", "value"]]
        lines += [
            "## Upsamplers: PSNR against the true render (dB; higher is better)",
            "",
            frame.rename(columns={"value": "PSNR (dB)"}).to_markdown(index=False, floatfmt=".2f"),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = Parser(prog="bench/recipe.py", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="a recipe file: an override file with a [recipe] table")
    p.add_argument("--out", help="run folder of the recipe (default: runs/recipe/NAME)")
    p.add_argument("--clip", help="the CLIP run folder to train on (default: the shipped one)")
    p.add_argument("--num-captions", type=int, help="captions per set (recipe.num_captions)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting after the file (repeat): train.glide.seed=2, "
        'decoder.guidance=6, recipe.splits=["train"]',
    )

    def body() -> None:
        args = p.parse_args(argv)
        t0, path = time.perf_counter(), Path(args.recipe)
        changes = read_overrides(path) | dict(parse_assignment(a) for a in args.set)
        if args.num_captions is not None:
            changes["recipe.num_captions"] = args.num_captions
        recipe, rest = split_recipe(changes)
        preset = get_preset(recipe.preset)
        for stage in recipe.stages:
            check_trainable(preset, stage)
        only = recipe.stages[0] if len(recipe.stages) == 1 else None
        preset = override(preset, rest, stage=only)
        out = writable(args.out or Path("runs/recipe") / path.stem)
        needs_clip = "generation" in recipe.score or "clip" in recipe.score
        needs_clip |= any(STAGES[s].on_clip for s in recipe.stages)
        clip = clip_folder(recipe, out, args.clip) if needs_clip else None
        if args.clip and not needs_clip:
            raise UserError("--clip: nothing in this recipe trains on or scores a CLIP")
        trained = train_stages(recipe, preset, out, clip)
        modules = stack(recipe, out, clip)
        set_sampling(modules, {k: v for k, v in preset.overrides.items() if k in SAMPLING_KEYS})
        scores, rows = {}, []
        if "generation" in recipe.score:
            model = model_of(modules)
            scores["generation"] = score_generation(recipe, model, "decoder" in modules)
            rows += generation_rows(scores["generation"][0])
            for sigma in recipe.posthoc:  # the last stage with the EMA of another width
                stage = recipe.stages[-1]
                weights, step = posthoc_ema.synthesize(out / stage, sigma)
                variant = modules | {stage: copy.deepcopy(modules[stage])}
                variant[stage].load_state_dict(weights)
                table, confusions = score_generation(
                    recipe, model_of(variant), "decoder" in modules
                )
                scores.setdefault("posthoc", []).append((sigma, stage, step, table, confusions))
                table = table.assign(method=table["method"] + f" (EMA σ_rel {sigma})")
                rows += generation_rows(table)
        if "clip" in recipe.score:
            scores["clip"] = score_clip(modules["clip"])
            rows += clip_rows(scores["clip"])
        if "psnr" in recipe.score:
            scores["psnr"] = score_psnr(recipe, modules)
            rows += scores["psnr"]
        command = (
            checkpoint.typed_command()
            if argv is None
            else " ".join(["python bench/recipe.py", *argv])
        )
        seconds = time.perf_counter() - t0
        text = report_md(path, command, preset, recipe, trained, scores, seconds)
        write_text(out / "report.md", text + "\n")
        frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
        write_text(out / "report.csv", frame.to_csv(index=False, float_format="%.4f"))
        print(text)
        print(f"wrote {out / 'report.md'} and {out / 'report.csv'}")

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
