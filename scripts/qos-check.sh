#!/usr/bin/env bash
# QoS acceptance check (issue 5): builds the release binaries, then runs the design study's
# scenarios A1, A3, A4 (with a QoS-off negative control), A5 and A9 against vvold on
# loopback and prints each measured figure next to its target. Exit status 1 if any target
# is missed. Takes about three minutes (QOS_SECONDS=10 per measured window).
#
#   scripts/qos-check.sh                 # full run
#   QOS_SECONDS=5 scripts/qos-check.sh   # shorter windows
#   QOS_PIN=1 scripts/qos-check.sh       # A9 with daemons and client on one CPU (less noise)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "qos-check: python3 is needed" >&2; exit 2; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bins --quiet
fi
exec python3 scripts/qos_check.py
