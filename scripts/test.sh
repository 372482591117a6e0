#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the test suite, python -m pytest on tests/
# (pyproject's addopts leave out the `slow` marker; pass -m slow, -k ... or paths as arguments).
# Fails on any failure and also when no test ran: pytest's exit code 5, or a summary without a
# single passed test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
"$ROOT/.venv/bin/python" -m pytest "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] FAIL: pytest collected no tests (exit code 5)" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "[test] FAIL: pytest exit code $rc" >&2
  exit "$rc"
fi
if ! tail -n 3 "$log" | grep -Eq '(^|[^0-9])[1-9][0-9]* passed'; then
  echo "[test] FAIL: the pytest summary shows no passed test" >&2
  exit 1
fi
echo "[test] OK" >&2
