#!/usr/bin/env bash
# Everything on a fresh machine: .venv, install, embedded model, then the quickstart dataset.
#   bash scripts/quickstart.sh [extra `prefdata build` options, e.g. --limit 32]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
prefdata models provision
data=${PREFDATA_DATA:-../shared/data}
args=()
if [ ! -f "$data/oasst_prompt_lottery_150.jsonl" ]; then
  echo "($data/oasst_prompt_lottery_150.jsonl not found: using examples/prompts.jsonl; set PREFDATA_DATA to use the OASST prompts)"
  args=(--input examples/prompts.jsonl)
fi
prefdata build examples/quickstart.toml "${args[@]}" "$@"
