#!/usr/bin/env bash
# One command for the Python demo: a virtual environment with the SDK from this
# repository (../../sdk/python, extras mcp and starlette, plus uvicorn), then the demo.
# Needs Python 3.11+ and Go (Mandate is built from this repository; MANDATE_BIN skips it).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e '../../sdk/python[mcp,starlette]' 'uvicorn>=0.30,<1' 'pytest>=8,<10'
fi
exec .venv/bin/python demo.py "$@"
