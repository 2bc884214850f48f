#!/usr/bin/env bash
# Create the virtual environment in which benchmarks/compare_py4dstem.py runs py4DSTEM.
#
# py4DSTEM 0.14.18 pins numpy<2 and scikit-learn<1.5, so it can never share strainkit's
# environment; the benchmark only *calls* it (GPL-3.0), from this separate interpreter.
#
# Usage:  bash benchmarks/setup_py4dstem_venv.sh [PYTHON]
#         PYTHON: an interpreter of Python 3.10-3.12 (default python3); numpy<2 has no
#         wheels for newer versions. Needs network access to PyPI (about 40 s, 0.75 GB).
# Result: benchmarks/.venv-py4dstem (ignored by git). Re-running it is harmless.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv-py4dstem"
python="${1:-python3}"

if ! "${python}" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
    echo "error: ${python} is Python $("${python}" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?');" >&2
    echo "py4DSTEM 0.14.18 (numpy<2) needs Python 3.10-3.12: bash $0 python3.12" >&2
    exit 1
fi

"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet "py4DSTEM==0.14.18"
"${venv}/bin/python" - <<'EOF'
import numpy, scipy, sklearn, py4DSTEM
print(f"py4DSTEM {py4DSTEM.__version__}, numpy {numpy.__version__}, "
      f"scipy {scipy.__version__}, scikit-learn {sklearn.__version__}")
EOF
echo "py4DSTEM virtual environment ready: ${venv}"
echo "now run: python benchmarks/compare_py4dstem.py --scan 32"
