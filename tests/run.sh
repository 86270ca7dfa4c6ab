#!/usr/bin/env bash
# The project's test command (README, and .ci/run calls it): fetch the reference data that
# nobody here wrote (llama.cpp's tokenizer vectors, the official Qwen3 tokenizer.json) into the
# git-ignored tests/data/, then run every test. Without network the data-dependent tests print
# "SKIP <reason>" instead of passing silently.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 tests/fetch_data.py
# --nocapture: a passing test that skipped still shows its "SKIP <reason>" line.
cargo test --all-targets "$@" -- --nocapture 2>&1 | tee /tmp/rotary-test.log
echo "--- skipped (missing data or device):"
grep -h '^SKIP' /tmp/rotary-test.log || echo "none"
