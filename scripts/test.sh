#!/usr/bin/env bash
# Runs the whole test suite (creating ./.venv first when needed). Extra args go to pytest.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
python -m pytest -n 2 --dist loadfile "$@"
rc=$?
# pytest exits 5 when no test was collected: that is not a failure of the suite.
if [ "$rc" -eq 5 ]; then rc=0; fi
exit "$rc"
