#!/usr/bin/env bash
# Scale, fairness and bounded memory (issue 6 item 4), on loopback, on this machine.
#
# Builds the release binaries, then scripts/scale.py starts one vvold on free 127.0.0.1 ports
# (a null LUN 0, a 1 GiB ram LUN 1, PEs 254 and 255, a `ram` container), creates 1,000 VVols
# of 64 MiB through the HTTP API and binds 250 for each of 4 hosts, alternating the PEs, and:
#
#   scale      4 vvold-load processes at once (one per host, 4 sessions x QD 8 each, 4 KiB
#              random reads) spreading every command over the host's 250 VVols, against the
#              same 4 processes all on LUN 1 (the single-LUN baseline); SCALE_PAIRS
#              alternated pairs (default 4). Target: spread >= 95 % of single-LUN IOPS (summed
#              over the pairs), and every one of the 1,000 VVols got I/O.
#   fairness   64 sessions at QD 4 on LUN 1: no session below half the mean.
#   memory     vvold's VmRSS after start, binds, each scale run and the fairness run; it must
#              not grow between the first and the last scale pair by more than RSS_SLACK_MIB.
#
# It prints a summary with each figure next to its target and exits 1 if one is missed.
# Everything it starts is stopped by PID.
#
#   scripts/scale.sh               10 s per measured run (about 3 minutes)
#   QUICK=1 scripts/scale.sh       3 s per run, 1 s warm-up
#
# Settings (environment):
#   SECONDS=N         measured seconds per run (default 10; QUICK=1: 3)
#   WARMUP=N          vvold-load warm-up seconds, not measured (default 2; QUICK=1: 1)
#   SCALE_PAIRS=N     spread/single pairs (default 4, at least 2)
#   RSS_SLACK_MIB=N   allowed VmRSS growth from the first to the last pair (default 4)
#   QOS=off           the same with QoS disabled (no caps, no per-volume telemetry), to see
#                     what QoS costs at this scale (the target holds with QoS on)
#   SKIP_BUILD=1      use the binaries already in target/release
#   KEEP=1            keep the temporary directory (config, logs, LUN lists) on success too
set -euo pipefail

# shellcheck source=scripts/lib/durations.sh
source "$(dirname "$0")/lib/durations.sh"
case "$WARMUP" in '' | *[!0-9]*) echo "WARMUP must be a whole number" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "scale.sh: python3 is needed" >&2; exit 2; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== cargo build --release --bins"
  cargo build --release --bins
fi

# The driver runs in the background so that a signal reaches this trap at once; it stops
# its own children (vvold, vvold-load) by PID when told to stop.
PY_PID=""
stop() {
  trap - INT TERM
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    wait "$PY_PID" 2>/dev/null || true
  fi
  exit 130
}
trap stop INT TERM
SCALE_SECONDS=$DURATION SCALE_WARMUP=$WARMUP python3 scripts/scale.py &
PY_PID=$!
rc=0
wait "$PY_PID" || rc=$?
exit "$rc"
