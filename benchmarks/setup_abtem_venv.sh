#!/usr/bin/env bash
# Create the virtual environment in which benchmarks/multislice.py runs abTEM.
#
# abTEM (GPL-3.0) is never a dependency of strainkit: the benchmark data generator only
# *calls* it, from this separate interpreter, and writes HDF5 files that strainkit reads.
#
# Usage:  bash benchmarks/setup_abtem_venv.sh [PYTHON]
#         PYTHON: an interpreter of Python >= 3.11 (abTEM 1.0.11 requires it; default
#         python3). Needs network access to PyPI.
# Result: benchmarks/.venv-abtem (ignored by git). Re-running it is harmless.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv-abtem"
python="${1:-python3}"

if ! "${python}" -c 'import sys; sys.exit(not sys.version_info[:2] >= (3, 11))'; then
    echo "error: ${python} is Python $("${python}" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?');" >&2
    echo "abTEM 1.0.11 needs Python >= 3.11: bash $0 python3.11" >&2
    exit 1
fi

"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet "abtem==1.0.11" h5py
"${venv}/bin/python" - <<'PY'
import abtem, dask, h5py, numpy
print(f"abTEM {abtem.__version__}, numpy {numpy.__version__}, dask {dask.__version__}, "
      f"h5py {h5py.__version__}")
PY
echo "abTEM virtual environment ready: ${venv}"
echo "now run: ${venv}/bin/python benchmarks/multislice.py si001_t54_s8_small"
