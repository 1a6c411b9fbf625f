#!/usr/bin/env bash
# Install IBM's aihwkit (the `aihwkit` extra of nvcim) against the CPU torch already installed in
# a Python environment, without ever letting pip replace that torch.
#
# aihwkit's PyPI wheels pin particular torch builds (a plain `pip install aihwkit` would pull another
# torch, often a multi-GB CUDA one); aihwkit 1.2.0 builds from its source distribution against the
# CPU torch 2.13.0 in a few minutes on 2 cores. Its build needs a BLAS (Debian `libopenblas-dev`),
# CMake, scikit-build, pybind11 and mypy's `stubgen` on the PATH, and must see the installed torch
# (`--no-build-isolation`). Under `nice` on 2 busy cores the build took about 25 minutes.
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

# Build tools and aihwkit's run-time dependencies into the same environment (`stubgen`, from mypy, must be on
# the PATH of the build). Not torchvision, which aihwkit lists but uses only in its `experiments` and `cloud`
# modules: PyPI's torchvision is built for PyPI's torch, and with a CPU torch it fails to import ("operator
# torchvision::nms does not exist"), which would break every library that tries `import torchvision`.
nice -n "$NICE" "$PY" -m pip install -q --constraint <(echo "torch==$before") "cmake>=4.2.1" "scikit-build>=0.18.1" \
    "pybind11>=3.0.1" mypy scikit-learn scipy "requests>=2.32,<3" numpy protobuf tqdm
BIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
export PATH="$BIN:$PATH"

# The source distribution only, built against the torch installed here, its dependencies installed above
# (--no-deps: nothing may resolve torch or torchvision again).
nice -n "$NICE" "$PY" -m pip install --no-binary aihwkit --no-build-isolation --no-deps "$AIHWKIT"

after="$(torch_version)"
if [[ "$after" != "$before" ]]; then
    echo "install_aihwkit.sh: torch changed from $before to $after; reinstall torch==$before" >&2
    exit 1
fi
"$PY" -c 'import aihwkit; from aihwkit.simulator.rpu_base import cuda; print("aihwkit", aihwkit.__version__, "torch unchanged:", __import__("torch").__version__)'
if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)'; then
    "$PY" -c 'import torchvision' 2>/dev/null \
        || echo "install_aihwkit.sh: warning: torchvision is installed but does not import with torch $before: install the build matching it, or uninstall it" >&2
fi
