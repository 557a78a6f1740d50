#!/usr/bin/env bash
# Make sure the HTML report's browser test (tests/test_report_browser.py) has a headless
# Chromium: `make test` (its `browser` step) runs this before pytest.
#
# A browser already there (DSB_CHROMIUM, or chromium / chromium-browser / google-chrome on
# the PATH) is used as it is. Otherwise, on Debian or Ubuntu as root or with password-less
# sudo, the distribution's `chromium` package is installed (about a minute). Where none can
# be had, this says so plainly and exits 0: the suite still runs, and the browser test
# reports itself skipped with the reason (under CI=true it fails instead, so a CI run
# never passes without it).
set -uo pipefail

have_browser() {
    if [ -n "${DSB_CHROMIUM:-}" ]; then
        command -v "$DSB_CHROMIUM" >/dev/null 2>&1
        return
    fi
    for name in chromium chromium-browser google-chrome google-chrome-stable chrome; do
        command -v "$name" >/dev/null 2>&1 && return 0
    done
    return 1
}

if have_browser; then
    exit 0
fi
if [ -n "${DSB_CHROMIUM:-}" ]; then
    echo "ensure_browser: DSB_CHROMIUM=$DSB_CHROMIUM is not an executable; the browser test will not run" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        SUDO="none"
    fi
fi
if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_browser: no headless Chromium here and no way to install one (needs apt-get as root or" >&2
    echo "  password-less sudo); the browser test will be skipped. Install chromium, or set DSB_CHROMIUM." >&2
    exit 0
fi

echo "ensure_browser: installing Debian's chromium package for the browser test (once; about a minute)"
log="$(mktemp)"
if $SUDO apt-get update -q >"$log" 2>&1 \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >>"$log" 2>&1 \
    && have_browser; then
    echo "ensure_browser: installed $(command -v chromium)"
else
    echo "ensure_browser: installing chromium failed (last lines of apt-get below); the browser test will be skipped" >&2
    tail -n 5 "$log" >&2
fi
rm -f "$log"
exit 0
