#!/usr/bin/env bash
# The Python SDK's whole check, as CI runs it (from sdk/python, after
# `python3 -m venv .venv && .venv/bin/pip install -e '.[test]'`): lint, strict types,
# the tests (unit and integration against a Mandate binary built from this repository,
# or MANDATE_BIN), and the built wheel in a fresh virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
step() { printf '\n==> %s\n' "$*"; }

step "ruff"
"$PY" -m ruff check src tests
"$PY" -m ruff format --check src tests

step "mypy --strict (package and tests)"
"$PY" -m mypy
MYPYPATH=tests "$PY" -m mypy --strict --explicit-package-bases tests

step "pytest"
"$PY" -m pytest -q -p no:cacheprovider
