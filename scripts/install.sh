#!/usr/bin/env bash
# Installs everything a fresh machine lacks: the pinned Python packages, this package, Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
if ! command -v chromium >/dev/null 2>&1; then
  # The browser tests drive Debian's Chromium; Playwright's own browser download is not available here.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
