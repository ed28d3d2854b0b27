"""Does `make train` reproduce the shipped stack? Each component of a run folder against its
shipped copy.

    .venv/bin/python bench/reproduce.py --runs runs/shapes      ->  runs/shapes/reproduce.md

For every component trained in RUNS: its steps and training minutes (`train_seconds` in
config.json) beside the shipped one's; whether its weights are the very ones shipped (the
SHA-256 that `export` keeps as `source_sha256`); and, where not, how far apart they are:
‖run − shipped‖ / ‖shipped‖ over all weights, both read as float32 (`checkpoint.load_weights`).
Float noise (one thread against two) grows over thousands of steps; whether two such runs draw
equally well is the oracle's to say (`bench/decoder_sampling.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

from unclip_repro import checkpoint
from unclip_repro.cli import Parser, UserError, run
from unclip_repro.components import COMPONENTS
from unclip_repro.files import write_text


def relative_difference(run: Path, shipped: Path) -> float:
    """‖run − shipped‖ / ‖shipped‖ over the floating-point tensors both hold."""
    a, b = checkpoint.load_weights(run), checkpoint.load_weights(shipped)
    num = den = 0.0
    for name, want in b.items():
        if want.is_floating_point() and name in a:
            num += float((a[name] - want).pow(2).sum())
            den += float(want.pow(2).sum())
    return (num / den) ** 0.5 if den else float("nan")


def main() -> None:
    """Write and print the comparison."""
    p = Parser(prog="bench/reproduce.py", description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="a train-all folder, e.g. runs/shapes")
    p.add_argument("--shipped", default=str(checkpoint.shipped("shapes")))
    p.add_argument("--out", help="the report (default: RUNS/reproduce.md)")
    args = p.parse_args()
    runs, shipped = Path(args.runs), Path(args.shipped)
    found = [c for c in COMPONENTS if all(checkpoint.exists(f / c) for f in (runs, shipped))]
    if not found:
        raise UserError(f"no component is both trained in {runs} and shipped in {shipped}")
    lines = [
        f"`{runs}` against `{os.path.relpath(shipped)}` (`{checkpoint.typed_command()}`)\n",
        "| component | steps run / shipped | minutes run / shipped | same weights "
        "| ‖Δ‖ / ‖shipped‖ |",
        "|---|---|---|---|---|",
    ]
    total = 0.0
    for name in found:
        mine, theirs = checkpoint.load_config(runs / name), checkpoint.load_config(shipped / name)
        same = checkpoint.identity(runs / name) == checkpoint.identity(shipped / name)
        gap = 0.0 if same else relative_difference(runs / name, shipped / name)
        minutes = [c.get("train_seconds", float("nan")) / 60 for c in (mine, theirs)]
        total += minutes[0]
        lines.append(
            f"| {name} | {mine['step']} / {theirs['step']} | {minutes[0]:.1f} / {minutes[1]:.1f} "
            f"| {'yes' if same else 'no'} | {gap:.2e} |"
        )
    lines.append(f"\nTraining minutes of the run, summed: {total:.1f}.")
    report = "\n".join(lines) + "\n"
    write_text(Path(args.out or runs / "reproduce.md"), report)
    print(report)


if __name__ == "__main__":
    run(main)
