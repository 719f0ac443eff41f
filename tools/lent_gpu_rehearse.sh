#!/usr/bin/env bash
# A loan of tools/lent_gpu.py rehearsed on this machine, every step as on the GPU machine, with a
# toy experiment (2 seeds x 2 runs, a tiny random LM, CPU): the CPU part, `pack --runs '2-*'`, `stash 1`
# (key check), `stash 2`, `finish`, a second `finish` (goes on with the warm machine's run), a `finish`
# of a run not packed (refused), `unpack` into the local run; fails unless seed 2's two runs come back
# finished, with their evaluate.fuse blends, and their rows are in the ledger, from which a fresh checkout's
# `mmsrarec board` (no run folder at all) gives the same leaderboard. ~2 min on 2 cores.
# Overwrites .gpu/ (the packed parts) and /tmp/mmsrarec-stash, /tmp/mmsrarec-site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
R=${TMPDIR:-/tmp}/lent-gpu-rehearsal
rm -rf "$R" /tmp/mmsrarec-site && mkdir -p "$R/empty" "$R/out" /tmp/mmsrarec-stash && touch /tmp/mmsrarec-stash/part.09  # stash 1 drops it
# what a failed try on a warm machine left (a wheel pip cannot install): stash 1 and finish start from empty folders
for d in prefix all; do mkdir -p /tmp/mmsrarec-stash/$d/.whl && echo x > /tmp/mmsrarec-stash/$d/.whl/stale-1.0-py3-none-any.whl; done
R="$R" $PY - <<'PY'
import os
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from conftest import write_atomic  # noqa: E402

from mmsrarec.models.tiny import tiny_causal_lm  # noqa: E402

R = Path(os.environ["R"])
lm, data = tiny_causal_lm(R / "tiny"), write_atomic(R / "toy")
(R / "toy.yaml").write_text(f"""name: toy
data: {{source: atomic, path: {data}, name: toy, num_negatives: 5}}
cf: {{models: [pop, sasrec], train: {{epochs: 1}}}}
summarize: {{model: {{name_or_path: {lm}}}, max_new_tokens: 6}}
rank: {{keywords_from: summarize, model: {{name_or_path: {lm}}}, sft: {{max_steps: 1}}, max_examples: 8, score_batch_size: 8}}
evaluate: {{methods: [pop, sasrec, mmsrarec], protocols: [sampled], report_users: 0, fuse: [sasrec]}}
experiment: {{seeds: [1, 2], parallel: 2, variants: [{{name: no-retrieval, set: [rank.use_retrieval=false]}}]}}
""")
PY
HERE=(--config "$R/toy.yaml" --set "runs_dir=$R/here" --set "experiment.ledger=$R/ledger.csv")
THERE=(--config "$R/toy.yaml" --set "runs_dir=$R/device" --set "experiment.ledger=$R/device-ledger.csv" --runs '2-*')
echo "== here: the CPU part"; $PY -m mmsrarec.cli run "${HERE[@]}" --stop-before train-ranker 2>&1 | tail -1
echo "== here: pack"; $PY tools/lent_gpu.py pack "${HERE[@]}" --runs '2-*' --wheels "$R/empty" --chunk 60000000
echo "== there: stash 1"; $PY tools/lent_gpu.py stash 1 "${THERE[@]}" 2>&1 | grep "keys:"
echo "== there: stash 2, finish"; $PY tools/lent_gpu.py stash 2
OUT=$R/out $PY tools/lent_gpu.py finish "${THERE[@]}" --parts 2 --budget 300 2>&1 | grep "^\[lent_gpu\]"
cp "$R/out/run.log" "$R/finish1.log"
echo "== there: finish again"
OUT=$R/out $PY tools/lent_gpu.py finish "${THERE[@]}" --parts 2 --budget 300 2>&1 | grep "^\[lent_gpu\]"
echo "== there: finish a run the payload does not hold (refused)"
if OUT=$R/out2 $PY tools/lent_gpu.py finish --config "$R/toy.yaml" --set "runs_dir=$R/device" --runs '1-main' \
    --parts 2 --budget 300 >"$R/refused.log" 2>&1 || ! grep -q "not in the payload: 1-main" "$R/refused.log"; then
  echo "FAILED: finish did not refuse a run it has no stages of"; cat "$R/refused.log"; exit 1
fi
# nothing ran in the calls' own logs (the stop-before pass); train-ranker and evaluate once in each run's log
expect() {
  local n; n=$(grep -c "running ->" "$1" || true)
  [ "$n" = "$2" ] || { echo "FAILED: $1: $n stages ran, expected $2"; grep "running ->" "$1"; exit 1; }
}
expect "$R/finish1.log" 0; expect "$R/out/run.log" 0
for log in "$R"/device/toy/experiment/2-*/run.log; do expect "$log" 2; done
echo "== here: unpack"; $PY tools/lent_gpu.py unpack "$R/out" "${HERE[@]}" 2>&1 | grep "^\[" | tail -2
grep -q "Not finished, left out: 1-main, 1-no-retrieval\." "$R/here/toy/leaderboard/leaderboard.md" \
  || { echo "FAILED: seed 2's runs did not come back finished"; cat "$R/here/toy/leaderboard/leaderboard.md"; exit 1; }
for row in "mmsrarec+sasrec" "no-retrieval+sasrec"; do  # evaluate.fuse's blends (with their weight), the variant's too
  grep -F "| $row (weight " "$R/here/toy/leaderboard/leaderboard.md" | grep -qE "^\| [^ ]+ \(weight [0-9.]+\) \| 1 \|" \
    || { echo "FAILED: no '$row' row"; cat "$R/here/toy/leaderboard/leaderboard.md"; exit 1; }
done
cut -d, -f1 "$R/ledger.csv" | sort -u | tr '\n' ' ' | grep -qx "2-main 2-no-retrieval label " \
  || { echo "FAILED: the ledger does not hold exactly seed 2's runs"; cat "$R/ledger.csv"; exit 1; }
echo "== a fresh checkout (no run folder): the board from the ledger"
mv "$R/here" "$R/here-was"
$PY -m mmsrarec.cli board "${HERE[@]}" 2>&1 | grep "runs finished"
tail -1 "$R/here/toy/leaderboard/leaderboard.md" | grep -q "^From the ledger .*: 2-main, 2-no-retrieval\.$" \
  || { echo "FAILED: the board does not name the runs it took from the ledger"; exit 1; }
diff "$R/here-was/toy/leaderboard/leaderboard.md" <(head -n -2 "$R/here/toy/leaderboard/leaderboard.md") \
  || { echo "FAILED: the ledger's board differs from the run folders' board"; exit 1; }
echo "rehearsal passed: $R/here/toy/leaderboard/leaderboard.md"
