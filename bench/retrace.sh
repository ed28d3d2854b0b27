#!/usr/bin/env bash
# Does today's code train a stage as an older commit did? And what does the thread count do?
#
#   bench/retrace.sh c3acf34 glide 30     # the commit that trained the shipped GLIDE
#   bench/retrace.sh 4535f01 clip 20      # the commit that trained the shipped CLIP
#   THREADS_NOW=2 bench/retrace.sh 4535f01 clip 20   # the same code, 2 threads against 1
#
# Trains STAGE of the `shapes` preset for STEPS steps twice (stages after CLIP read the shipped
# CLIP): with the code of COMMIT (a git worktree) on THREADS_THEN threads (default 1), and with
# the working tree on THREADS_NOW (default 1); prints both loss columns side by side and the
# first step that differs. Same code, CLIP, seed and thread count give the same losses bit for
# bit.
set -euo pipefail
commit=${1:?usage: bench/retrace.sh COMMIT STAGE STEPS}
stage=${2:?usage: bench/retrace.sh COMMIT STAGE STEPS}
steps=${3:?usage: bench/retrace.sh COMMIT STAGE STEPS}
root=$(git rev-parse --show-toplevel)
py="$root/.venv/bin/python"
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/then" >/dev/null 2>&1; rm -rf "$tmp"' EXIT
git -C "$root" worktree add --detach --quiet "$tmp/then" "$commit"
clip=()  # the stages after CLIP read the shipped one
[ "$stage" = clip ] || clip=(--clip "$root/unclip_repro/checkpoints/shapes/clip")
train() {  # where, threads, out; the progress bar goes to out.err, shown if training fails
    (cd "$1" && PYTHONPATH="$1" OMP_NUM_THREADS="$2" "$py" -m unclip_repro train --preset shapes \
        --stage "$stage" --steps "$steps" "${clip[@]}" --out "$3" 2>"$3.err" | tail -n 1) ||
        { echo "bench/retrace.sh: training in $1 failed: $(tail -n 1 "$3.err")" >&2; exit 1; }
}
train "$tmp/then" "${THREADS_THEN:-1}" "$tmp/run-then"
train "$root" "${THREADS_NOW:-1}" "$tmp/run-now"
paste -d, <(cut -d, -f1,2 "$tmp/run-then/log.csv") <(cut -d, -f2 "$tmp/run-now/log.csv") |
    tail -n +2 >"$tmp/losses.csv"  # step, loss then, loss now
echo "step, loss at $commit (${THREADS_THEN:-1} threads), loss now (${THREADS_NOW:-1} threads)"
cat "$tmp/losses.csv"
awk -F, '$2 != $3 { print "first difference at step " $1; found = 1; exit }
         END { if (!found) print "identical losses over every step" }' "$tmp/losses.csv"
