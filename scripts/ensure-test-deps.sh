#!/usr/bin/env bash
# Install the system packages the test suite drives for real, when they are missing:
#   chromium    headless browser for the tree-viewer test (Debian package)
#   postgresql  server binaries for the multi-worker tests (a throwaway cluster is started
#               by the tests themselves)
# Needs root and apt-get; without them the tests that need these skip with a reason.
set -u
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: ${missing[*]} missing and cannot be installed here (need root + apt-get);" \
         "the tests that use them will be skipped" >&2
    exit 0
fi
echo "installing ${missing[*]} for the test suite" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "note: could not install ${missing[*]}; the tests that use them will be skipped" >&2
exit 0
