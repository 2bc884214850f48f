#!/usr/bin/env bash
# Create the isolated virtual environment that benchmarks/compare_py4dstem.py uses to run
# py4DSTEM. py4DSTEM 0.14.18 pins numpy<2 and scikit-learn<1.5, so it cannot share
# strainkit's environment; the benchmark only *calls* it, in this separate interpreter.
#
# Usage:  bash benchmarks/setup_py4dstem_venv.sh [python3]
# Result: benchmarks/.venv-py4dstem (ignored by git)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv-py4dstem"
python="${1:-python3}"

"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --upgrade pip
"${venv}/bin/python" -m pip install "py4DSTEM==0.14.18"
"${venv}/bin/python" -c "import py4DSTEM, numpy; print('py4DSTEM', py4DSTEM.__version__, 'numpy', numpy.__version__)"
echo "py4DSTEM virtual environment ready: ${venv}"
