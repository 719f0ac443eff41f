#!/usr/bin/env bash
# Create experiments/recbole/.venv: an environment of its own for RecBole 1.2.1 (reference SASRec/GRU4Rec),
# kept apart from mmsrarec's environment because RecBole needs numpy<2, ray 2.6 and setuptools<81.
#
#   bash experiments/recbole/setup_venv.sh           # create or complete it; a no-op when already set up
#   bash experiments/recbole/setup_venv.sh --force   # delete and recreate it
#   PYTHON=python3.11 bash experiments/recbole/setup_venv.sh
#
# Python must be 3.9-3.11 (ray 2.6.3, the newest RecBole 1.2.1 accepts, has no wheels for 3.12+).
set -euo pipefail

start=$(date +%s)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="$here/.venv"
req="$here/requirements.txt"
torch_pin="torch==2.13.0"       # the local CPU wheel; a bare `torch` would pull a multi-GB CUDA build
recbole_pin="recbole==1.2.1"
stamp="$venv/.setup-complete"

finish() { echo "setup_venv.sh: $1 in $(( $(date +%s) - start ))s"; }

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
fi

# The stamp records what was installed; if it matches, there is nothing to do.
want="$(cat "$req"; echo "$torch_pin"; echo "$recbole_pin")"
want_hash=$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_hash" && -x "$venv/bin/python" ]]; then
    finish "$venv already set up, nothing to do"
    exit 0
fi

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    for cand in python3.11 python3.10 python3.9 python3; do
        if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
    done
fi
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$ver" in
    3.9|3.10|3.11) ;;
    *) echo "setup_venv.sh: need Python 3.9-3.11 for ray 2.6.3, got $py ($ver); set PYTHON=" >&2; exit 1 ;;
esac

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv with $py ($ver)"
    "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# torch is named in the same command so no dependency (thop, tensorboard) can pull another torch.
"${pip[@]}" install "$torch_pin" -r "$req"
# --no-deps: RecBole's metadata also asks for plotly and tabulate, which SASRec/GRU4Rec runs never import.
"${pip[@]}" install --no-deps "$recbole_pin"

# Smoke check: everything run_recbole.py imports.
"$venv/bin/python" - <<'PY'
import warnings
warnings.filterwarnings("ignore")
import torch, numpy, pandas, recbole, recbole.quick_start
from recbole.model.sequential_recommender import SASRec, GRU4Rec
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert numpy.__version__.startswith("1."), numpy.__version__
print(f"ok: recbole {recbole.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"pandas {pandas.__version__}")
PY

echo "$want_hash" > "$stamp"
finish "$venv ready"
