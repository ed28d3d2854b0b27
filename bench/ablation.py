"""Issue 32's two-object ablation in one table: each lever's recipe run, scored by
`bench/recipe.py` on the same 500 training-pair captions per row, beside its training time.

    python bench/ablation.py                      # -> results/bench/two_objects/ablation.{md,csv}
    python bench/ablation.py --runs runs/recipe --out results/bench/two_objects/ablation

Each lever is a recipe file in bench/recipes/ (its command is in the file) whose run folder
holds report.csv; a lever not yet run is listed as such. The post-hoc EMA rows (lever d) are
the scores `recipe.posthoc` adds to the baseline's run. Intervals are 95% Wilson.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from unclip_repro import checkpoint
from unclip_repro.cli import Parser, run, writable
from unclip_repro.files import write_text

# (lever, run folder under --runs, method label in its report.csv)
BASE = "GLIDE baseline"
LEVERS = [
    ("baseline: the preset's GLIDE, EMA decay 0.999 (seed 0)", "glide-posthoc", BASE),
    ("(d) post-hoc EMA σ_rel 0.04 (shorter)", "glide-posthoc", f"{BASE} (EMA σ_rel 0.04)"),
    ("(d) post-hoc EMA σ_rel 0.15 (longer)", "glide-posthoc", f"{BASE} (EMA σ_rel 0.15)"),
    ("(a) own text encoder from scratch, words N(0, 1) (seed 0)", "glide-te", BASE),
    ("(a) own text encoder from scratch, words N(0, 1) (seed 1)", "glide-te-s1", BASE),
    ("(a) own text encoder from scratch, CLIP's init, at 5e-4", "glide-te-init", BASE),
    ("(a') own text encoder started as CLIP's text tower, at 1e-4", "glide-te-clip", BASE),
    ("(b) 75% two-object scenes (50% in the preset)", "glide-two75", BASE),
    ("(c) 4x wider at 16 and 8 px, 16-channel heads", "glide-wide", BASE),
    ("caption dropout 20% (GLIDE's) instead of 50%", "glide-drop20", BASE),
]
SHOWN = ["all", "shape", "relation", "first_bound", "second_bound", "shape_leak", "colour_leak"]


def found(rows: pd.DataFrame, objects: int, measure: str) -> pd.Series | None:
    """The report row of one measure of one caption set, None where the run has none."""
    hit = rows[(rows["objects"] == objects) & (rows["measure"] == measure)]
    return None if hit.empty else hit.iloc[0]


def cell(rows: pd.DataFrame, objects: int, measure: str) -> str:
    """'62% (58–66)' for one measure of one caption set, '–' where the run has none."""
    r = found(rows, objects, measure)
    if r is None:
        return "–"
    return (
        f"{r['value']:.0%} ({r['lo']:.0%}–{r['hi']:.0%})"
        if measure == "all"
        else f"{r['value']:.0%}"
    )


def table(runs: Path) -> pd.DataFrame:
    """One row per lever: training CPU-minutes and the oracle's shares."""
    out = []
    for lever, folder, method in LEVERS:
        report = runs / folder / "report.csv"
        row = {"lever": lever, "run": folder}
        if not report.is_file():
            out.append(row | {"train min": "not run"})
            continue
        rows = pd.read_csv(report)
        rows = rows[(rows["score"] == "generation") & (rows["method"] == method)]
        seconds = checkpoint.load_config(runs / folder / "glide").get("train_seconds")
        row["train min"] = f"{seconds / 60:.0f}" if seconds else "?"
        row["1 object: all"] = cell(rows, 1, "all")
        row |= {f"2 objects: {m}": cell(rows, 2, m) for m in SHOWN}
        all2 = found(rows, 2, "all")
        row["_all2"] = None if all2 is None else float(all2["value"])
        row["_min"] = seconds / 60 if seconds else None
        out.append(row)
    frame = pd.DataFrame(out)
    base = frame.iloc[0]
    if "_all2" in frame and pd.notna(base.get("_all2")):  # what a lever buys, per CPU-hour more
        gain = (frame["_all2"] - base["_all2"]) * 100
        extra = frame["_min"] - base["_min"]
        frame["Δ 2 objects: all (points)"] = gain.map(lambda g: f"{g:+.1f}" if pd.notna(g) else "")
        frame["extra train min"] = extra.map(lambda m: f"{m:+.0f}" if pd.notna(m) else "")
    return frame.drop(columns=["_all2", "_min"], errors="ignore").fillna("")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = Parser(prog="bench/ablation.py", description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/recipe", help="folder of the recipes' run folders")
    p.add_argument(
        "--out", default="results/bench/two_objects/ablation", help="writes OUT.md, OUT.csv"
    )

    def body() -> None:
        args = p.parse_args(argv)
        frame = table(Path(args.runs))
        out = Path(args.out)
        writable(out.parent)
        command = " ".join(
            ["python bench/ablation.py", *(argv if argv is not None else sys.argv[1:])]
        )
        text = "\n".join(
            [
                "# Issue 32: what each lever buys on two-object captions",
                "",
                f"`{command}`, from the recipe runs in `{args.runs}` (each recipe's command is in "
                "its file in `bench/recipes/`; `train min`: training time on one thread beside "
                "one other job). 500 training-pair captions per set, one 32-px image each, the "
                "oracle's share right with its 95% Wilson interval; `first_bound` "
                "(`second_bound`): the first (second) named object drawn with its colour and "
                "shape; `shape_leak` (`colour_leak`): one shape (colour) drawn twice where the "
                "caption names two. `–`: not in that run's report.",
                "",
                frame.to_markdown(index=False),
            ]
        )
        write_text(out.with_suffix(".md"), text + "\n")
        write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
        print(text)

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
