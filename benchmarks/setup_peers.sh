#!/usr/bin/env bash
# Install the peer tools for sweep_peers.py; safe to run again (pip skips what is already there).
#   - nnsight (and psutil) into the current python, beside actpatch;
#   - TransformerLens 3.9 into its own virtual environment, benchmarks/.venv-tl.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
venv="$here/.venv-tl"

"$python" -m pip install -q -r "$here/requirements-peers.txt"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# torch first and pinned: any other version would download gigabytes.
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -r "$here/requirements-transformerlens.txt"
"$venv/bin/python" -c "import transformer_lens, transformers, torch; print('TransformerLens', transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '3.9', '| transformers', transformers.__version__, '| torch', torch.__version__)"
