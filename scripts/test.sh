#!/usr/bin/env bash
# Run the test suite (creates .venv and installs first if needed).
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export PREFDATA_TEST_DATA=${PREFDATA_TEST_DATA:-$(cd .. && pwd)/shared/data}
exec python -m pytest "$@"
