#!/usr/bin/env bash
# Install IBM's aihwkit (the `aihwkit` extra of nvcim) against the CPU torch already installed in
# a Python environment, without ever letting pip replace that torch.
#
# aihwkit's PyPI wheels pin particular torch builds (a plain `pip install aihwkit` would pull another
# torch, often a multi-GB CUDA one); aihwkit 1.2.0 builds from its source distribution against the
# CPU torch 2.13.0 in a few minutes on 2 cores. Its build needs a BLAS (Debian `libopenblas-dev`),
# CMake, scikit-build, pybind11 and mypy's `stubgen` on the PATH, and must see the installed torch
# (`--no-build-isolation`).
#
#   bash scripts/install_aihwkit.sh [PYTHON]      # default: .venv/bin/python, else python3
#
# Environment: AIHWKIT (default aihwkit==1.2.0), APT=0 to skip the apt-get step (then install
# libopenblas-dev and cmake yourself), NICE (default 10: the build yields the CPU to other work).
set -euo pipefail

PY="${1:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
AIHWKIT="${AIHWKIT:-aihwkit==1.2.0}"
NICE="${NICE:-10}"

torch_version() { "$PY" -c 'import torch; print(torch.__version__)'; }
before="$(torch_version)" || { echo "install_aihwkit.sh: torch is not importable with $PY; install nvcim first (make setup)" >&2; exit 2; }
echo "torch before: $before"

if [[ "${APT:-1}" != 0 ]] && ! dpkg -s libopenblas-dev cmake >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q libopenblas-dev cmake
fi

# Build tools into the same environment; `stubgen` (from mypy) must be on the PATH of the build.
nice -n "$NICE" "$PY" -m pip install -q scikit-build pybind11 mypy
BIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
export PATH="$BIN:$PATH"

# The source distribution only, against the torch installed here: nothing may resolve torch again.
# A constraints file pins torch to the version installed, so that no dependency can swap it.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$before" > "$constraints"
nice -n "$NICE" "$PY" -m pip install --no-binary aihwkit --no-build-isolation \
    --constraint "$constraints" "$AIHWKIT"

after="$(torch_version)"
if [[ "$after" != "$before" ]]; then
    echo "install_aihwkit.sh: torch changed from $before to $after; reinstall torch==$before" >&2
    exit 1
fi
"$PY" -c 'import aihwkit; from aihwkit.simulator.rpu_base import cuda; print("aihwkit", aihwkit.__version__, "torch unchanged:", __import__("torch").__version__)'
