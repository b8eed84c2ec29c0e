#!/usr/bin/env bash
# Everything on a fresh machine: .venv, install, embedded model, then the quickstart dataset.
#   bash scripts/quickstart.sh [extra `prefdata build` options, e.g. --limit 32]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
prefdata models provision
prefdata build examples/quickstart.toml "$@"
