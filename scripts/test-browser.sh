#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test (tests/test_dashboard_browser.py), installed when missing.
#
#   scripts/test-browser.sh install           # make sure /usr/bin/chromium and /usr/bin/chromedriver exist
#   scripts/test-browser.sh run -- CMD ARGS... # install (if possible), then run CMD; exits with CMD's status
#
# Debian's `chromium` and `chromium-driver` packages are installed with apt-get (as root, or through
# `sudo -n`). When that is impossible (no root, no network), `run` still runs CMD with
# LIFECYCLE_TEST_BROWSER_SKIP set to the reason, and the browser test skips saying why.
set -euo pipefail

say() { echo "test-browser: $*" >&2; }

have() { [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; }

install() {
  have && return 0
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
      say "chromium is missing and this user cannot install packages (not root, no passwordless sudo)"
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null; then
    say "chromium is missing and apt-get is not available (not Debian/Ubuntu); install chromium and chromedriver"
    return 1
  fi
  say "installing Debian's chromium and chromium-driver"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q chromium chromium-driver >&2 \
    || { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q >&2 \
         && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q chromium chromium-driver >&2; } \
    || { say "apt-get could not install chromium chromium-driver"; return 1; }
  have
}

case ${1:-} in
  install) install ;;
  run)
    shift
    [[ ${1:-} == -- ]] && shift
    if ! install; then
      export LIFECYCLE_TEST_BROWSER_SKIP="Debian's chromium and chromium-driver could not be installed (see scripts/test-browser.sh)"
    fi
    exec "$@"
    ;;
  *) echo "usage: $0 install | run -- CMD ARGS..." >&2; exit 2 ;;
esac
