#!/usr/bin/env bash
# `rotary serve` against real clients (tests/serve.py): curl, the official openai Python client
# (installed here in a venv outside the repo; a SKIP line when PyPI cannot be reached) and a
# loopback load test. Usage: tests/serve.sh [path/to/rotary]
set -euo pipefail
cd "$(dirname "$0")/.."
rotary=${1:-target/release/rotary}
command -v curl > /dev/null || { apt-get update -qq && apt-get install -y -qq curl > /dev/null; }
venv=${XDG_CACHE_HOME:-$HOME/.cache}/rotary/serve-venv
python=python3
if [ -x "$venv/bin/python" ] || python3 -m venv "$venv" > /dev/null 2>&1 || \
   { apt-get install -y -qq python3-venv > /dev/null 2>&1 && python3 -m venv "$venv" > /dev/null 2>&1; }; then
    if "$venv/bin/python" -c "import openai" 2> /dev/null || "$venv/bin/pip" install -q "openai>=1.40" > /dev/null 2>&1; then
        python=$venv/bin/python
    else
        echo "SKIP openai client: PyPI could not be reached (pip install openai failed)"
    fi
else
    echo "SKIP openai client: no python3 venv"
fi
exec "$python" tests/serve.py "$rotary"
