#!/usr/bin/env bash
# Installs everything a fresh machine lacks: the pinned Python packages, this package, Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
# Byte-compiled once here: where PYTHONDONTWRITEBYTECODE is set (as on our CI machine) Python never writes
# them, and every process (the server, each sandbox child, each training run) compiled these sources again,
# 0.18 s of every server start. A source edited later is compiled in memory, as without this step.
python3 -m compileall -q -j 0 app decalign bench >/dev/null
# The fused attention kernel, built here once so that no process pays its 1 s compile (a CPU without AVX2
# or a machine without a C compiler runs torch's operators instead; the command then says so).
python3 -c 'from decalign.model.native import main; main()'
if ! command -v chromium >/dev/null 2>&1; then
  # The browser tests drive Debian's Chromium; Playwright's own browser download is not available here.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
