#!/usr/bin/env bash
# Creates the Python virtual environment of the export tests ($BITNET_QAT_VENV, default
# ~/.cache/bitnet-qat-venv, outside the clone so a cold CI run builds llama.cpp once) and
# installs scripts/python-requirements.txt into it: every version pinned. llama-cpp-python is a
# source package that vendors llama.cpp and builds it with CMake (a few minutes on 2 cores; pip
# fetches CMake and Ninja itself when the system lacks them).
# Safe to run repeatedly: it reinstalls only when the requirements file changed. A failure (no
# network) is a warning: the export tests skip without the environment (and fail under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${BITNET_QAT_VENV:-$HOME/.cache/bitnet-qat-venv}"
requirements=scripts/python-requirements.txt
stamp="$venv/.bitnet-qat-requirements"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
# Debian's own Python (a python3 earlier on PATH, pyenv's for one, may lack modules pip needs).
python=python3
if [ -x /usr/bin/python3 ]; then
  python=/usr/bin/python3
fi
echo "installing the export tests' Python packages into $venv (llama.cpp builds once)"
if { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"; } \
  && CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
     CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
     "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"; then
  echo "$want" > "$stamp"
else
  echo "warning: could not install the Python packages; the export tests will skip" >&2
fi
exit 0
