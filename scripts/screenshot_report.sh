#!/usr/bin/env bash
# Render an HTML report (from `lowbit report`) in headless Chromium and save a PNG screenshot.
#
# Usage:  scripts/screenshot_report.sh REPORT.html OUT.png [WIDTH [HEIGHT]]
#         (defaults: 1280 x 3000 pixels; the page is cut at HEIGHT)
#
# Needs Chromium: on Debian/Ubuntu `apt-get update && apt-get install -y chromium`
# (the binary is `chromium`; set CHROMIUM=/path/to/chrome to use another one).
# The browser runs with networking and background services off and a throw-away profile; the
# report is self-contained, so nothing is fetched. To shrink the PNG, `optipng`/`pngquant` help.
#
# Example (the picture in docs/):
#   lowbit report runs/demo --out /tmp/report.html
#   scripts/screenshot_report.sh /tmp/report.html docs/report-screenshot.png 1280 3000
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
report=$1
out=$2
width=${3:-1280}
height=${4:-3000}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [[ -z "$browser" ]]; then
    echo "error: Chromium not found; install it (apt-get install -y chromium) or set CHROMIUM" >&2
    exit 2
fi
if [[ ! -f "$report" ]]; then
    echo "error: $report is not a file" >&2
    exit 2
fi
abs_report=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
abs_out=$(mkdir -p "$(dirname "$out")" && cd "$(dirname "$out")" && pwd)/$(basename "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --window-size="$width,$height" \
    --screenshot="$abs_out" "file://$abs_report" >/dev/null 2>&1
ls -l "$abs_out"
