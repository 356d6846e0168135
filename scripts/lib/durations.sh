# shellcheck shell=bash
# Measured seconds and warm-up of the loopback benchmarks (bench.sh, scale.sh), sourced by them:
# sets DURATION and WARMUP from the environment's SECONDS, WARMUP and QUICK (QUICK=1: 3 s runs
# with 1 s warm-up; otherwise 10 s and 2 s).
#
# bash keeps its own running SECONDS counter (seeded from the environment): read the
# environment's value instead.
DURATION=$(printenv SECONDS || true)
QUICK=${QUICK:-0}
if [ -z "$DURATION" ]; then
  if [ "$QUICK" = 1 ]; then DURATION=3; else DURATION=10; fi
fi
if [ -z "${WARMUP:-}" ]; then
  if [ "$QUICK" = 1 ]; then WARMUP=1; else WARMUP=2; fi
fi
# Checked here for both scripts: a 0 s run would make iscsi-perf run forever (its -t 0).
case "$DURATION" in '' | *[!0-9]* | 0) echo "SECONDS must be a whole number > 0" >&2; exit 2 ;; esac
case "$WARMUP" in '' | *[!0-9]*) echo "WARMUP must be a whole number" >&2; exit 2 ;; esac
