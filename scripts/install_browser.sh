#!/usr/bin/env bash
# Debian's headless Chromium and its driver, for the page test (tests/test_serve_page.py). No browser download:
# both come from the Debian archive. Needs root (or passwordless sudo); without it the page test skips locally
# and fails in CI (CI=true), so a missing browser is never silently green there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "install_browser: not root and no passwordless sudo; install chromium and chromium-driver yourself" >&2
  [ -z "${CI:-}" ] && exit 0 || exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }
echo "install_browser: $(chromium --version 2>/dev/null | head -1), chromedriver installed"
