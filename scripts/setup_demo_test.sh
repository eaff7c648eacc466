#!/usr/bin/env bash
# Debian's Chromium for tests/test_demo.py's browser test (run by `make test` on first use).
# The Python side (gradio, playwright) comes with the package's `test` extra. Never runs
# `playwright install`, which downloads its own browser build: the test drives
# /usr/bin/chromium instead.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "note: /usr/bin/chromium is missing; install Debian's chromium (sudo apt-get install -y chromium)" \
       "or tests/test_demo.py skips its browser test" >&2
fi
