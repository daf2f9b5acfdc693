#!/usr/bin/env bash
# Chromium and chromedriver for the web page's browser test (tests/server/test_web_page.py), from
# the Debian packages `chromium` and `chromium-driver`. .ci/run calls it. It never fails its
# caller: where the packages cannot be installed (no apt-get, not root and no sudo, another
# distribution's names), it says why and the browser test skips with its reason.
set -uo pipefail
have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if have; then
  echo "== browser: $(chromium --version 2>/dev/null | head -1), chromedriver present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "== browser: no apt-get here; install Chromium and chromedriver yourself, or the browser test skips"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "== browser: not root and no password-less sudo: run 'sudo apt-get install chromium chromium-driver'," \
       "or the browser test skips"
  exit 0
fi
echo "== browser: apt-get install chromium chromium-driver"
start=$SECONDS
if "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq \
     --no-install-recommends chromium chromium-driver >/dev/null && have; then
  echo "   $(chromium --version 2>/dev/null | head -1) installed in $((SECONDS - start)) s"
else
  echo "   could not install them (see apt-get's message above); the browser test skips"
fi
exit 0
