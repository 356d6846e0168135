#!/usr/bin/env bash
# vvold against tgt on loopback, on this machine, with the same clients (issue 6).
#
# Starts tgtd (one target, a `null` backing-store LUN) and vvold twice (a null-backend LUN and
# a ram-backend LUN) on free 127.0.0.1 ports, then runs every workload with each client against
# each target and prints one table: IOPS, MB/s, mean and p99 latency (where the client gives
# them), CPU time of the target process per I/O (utime + stime of /proc/PID/stat, all threads),
# the client's CPU per I/O, and vvold/tgt ratios. Everything it starts is stopped by PID.
#
#   scripts/bench.sh               10 s per row (about 8 minutes)
#   QUICK=1 scripts/bench.sh       3 s per row, 1 s warm-up
#
# Settings (environment):
#   SECONDS=N        measured seconds per row (default 10; QUICK=1: 3)
#   WARMUP=N         vvold-load's warm-up and fio's ramp_time, not measured (default 2; QUICK=1: 1)
#   ONLY="a b"       run only these workloads (names as in the table's first column)
#   CLIENTS="iscsi-perf vvold-load"   which clients to run; add fio to also run fio (below)
#   FIO=PATH         a fio built with the libiscsi engine, for CLIENTS=fio
#   SKIP_BUILD=1     use the binaries already in target/release
#   TGT_DEFAULTS=1   leave tgt's iSCSI parameters at its defaults (8 KiB PDUs, InitialR2T=Yes,
#                    64 KiB FirstBurst); by default tgt is given vvold's (256 KiB PDUs...)
#   OUT=FILE         where the rows go as TSV (default target/bench/bench-DATE.tsv)
#   PIN=split        target processes on TARGET_CPUS (default 0), clients on CLIENT_CPUS
#                    (default 1): IOPS per target core, the client never on the target's core
#   PIN=same         targets and clients all on SAME_CPU (default 0): no cross-CPU wake-ups,
#                    so the rows compare the CPU cost of client + target per I/O
#   PIN=none         (default) let the scheduler place them
#   CLIENT_POLL_US=N vvold-load polls its sockets N µs after traffic before sleeping (default
#                    100; 0: sleeps at once). Without it, waking the client on this kind of VM
#                    took longer than the target's work, so the client's wake-ups, not the
#                    targets, set the pace (QD 16 against vvold: ~250K IOPS at 0, 400-470K at 100).
#                    The same client setting runs against every target.
#   VVOLD_POLL_US=N  vvold's iscsi.poll_us (default: unset, i.e. its default, 100): how long its
#                    network threads poll after traffic before sleeping; 0 never polls, which
#                    pays where wake-ups are cheap (see WAKE_PROBE). The header names it.
#   WAKE_PROBE=0     skip measuring this machine's sleep/wake-up cost (benches/wake.rs) and its
#                    loopback QD 1 floor (benches/loopback.rs), which the header otherwise
#                    prints: no target can spend less CPU per I/O than the first wherever it
#                    sleeps between commands, nor answer faster at QD 1 than the second
#   TCP_CC=NAME      vvold's iscsi.tcp_congestion_control (default: unset, i.e. cubic where the
#                    kernel allows it); TCP_CC=system keeps the system's, as tgt and the clients
#                    always do. The table's header names both.
#
# Placement matters a great deal on a small VM: where an idle vCPU halts (no guest halt
# polling), waking the other CPU costs tens of microseconds, so a client and a target that the
# scheduler happens to put on the same CPU ping-pong several times faster at low queue depth
# than on two CPUs (on the 2-vCPU VM this was written on, 4 KiB reads at QD 1: ~50K IOPS on one
# CPU, ~10K across two). Compare rows within one run (targets are interleaved row by row), and
# pin when runs must be comparable with each other.
#
# Clients: iscsi-perf (libiscsi-bin) reads only, through one session, and reports only average
# IOPS, so its rows have no write workloads, no p99, and a mean latency derived from Little's
# law (QD / IOPS, marked ~); its CPU is the process's whole run (bash `times`). vvold-load
# (this repository) does everything; its CPU figures cover exactly the measured period, and it
# samples the target's /proc/PID/stat at the same instants. iscsi-perf's target CPU is sampled
# around its whole run (login included, which is negligible).
#
# fio is optional: Debian's fio has no libiscsi engine, so FIO must point to one built from
# source with libiscsi-dev installed (./configure --enable-libiscsi; see
# scripts/fio/libiscsi.fio). Without it, fio in CLIENTS is skipped with a message. It runs
# vvold-load's rows through that engine (--qd as iodepth, --sessions as numjobs: each fio job
# logs in its own session), ramp_time WARMUP, and gives IOPS, MB/s, mean and p99 of the whole
# command's latency from its JSON; its client CPU is its jobs' usr + sys over the measured
# period. Its target CPU is sampled around its whole run like iscsi-perf's and divided by IOPS x
# (warm-up + measured seconds), the I/Os of that run. It does not poll (CLIENT_POLL_US is
# vvold-load's), and the engine sends queued commands only when fio waits for a completion.
set -euo pipefail

# shellcheck source=scripts/lib/durations.sh
source "$(dirname "$0")/lib/durations.sh"
CLIENTS=${CLIENTS:-"iscsi-perf vvold-load"}
ONLY=${ONLY:-}
PIN=${PIN:-none}
CLIENT_POLL_US=${CLIENT_POLL_US:-100}
case "$CLIENT_POLL_US" in '' | *[!0-9]*) echo "CLIENT_POLL_US must be a whole number" >&2; exit 2 ;; esac
case "${VVOLD_POLL_US:-}" in *[!0-9]*) echo "VVOLD_POLL_US must be a whole number" >&2; exit 2 ;; esac
for client in $CLIENTS; do
  case "$client" in
    iscsi-perf | vvold-load | fio) ;;
    *) echo "unknown client '$client' in CLIENTS (iscsi-perf, vvold-load, fio)" >&2; exit 2 ;;
  esac
done
# Why FIO cannot serve as the fio client, or nothing when it can.
fio_unusable() {
  if [ -z "${FIO:-}" ]; then echo "FIO is not set"; return; fi
  if ! command -v "$FIO" >/dev/null; then echo "FIO=$FIO is not an executable"; return; fi
  [[ $("$FIO" --enghelp 2>/dev/null) == *libiscsi* ]] || echo "$FIO --enghelp does not list libiscsi"
}
if [[ " $CLIENTS " == *" fio "* ]]; then
  why=$(fio_unusable)
  if [ -n "$why" ]; then
    echo "skipping client fio: $why. It needs a fio built with libiscsi-dev installed" \
      "(./configure --enable-libiscsi && make; see scripts/fio/libiscsi.fio)," \
      "then FIO=/path/to/fio." >&2
    CLIENTS=$(for c in $CLIENTS; do [ "$c" = fio ] || printf '%s ' "$c"; done)
    [ -n "$CLIENTS" ] || { echo "no other client in CLIENTS: nothing to run" >&2; exit 0; }
  else
    FIO=$(realpath "$(command -v "$FIO")")
  fi
fi
case "$PIN" in
  none) TARGET_PIN=(); CLIENT_PIN=() ;;
  split) TARGET_PIN=(taskset -c "${TARGET_CPUS:-0}"); CLIENT_PIN=(taskset -c "${CLIENT_CPUS:-1}") ;;
  same) TARGET_PIN=(taskset -c "${SAME_CPU:-0}"); CLIENT_PIN=(taskset -c "${SAME_CPU:-0}") ;;
  *) echo "PIN must be none, split or same" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/procs.sh
source "$ROOT/scripts/lib/procs.sh"

# ---- tools ----
# Debian's policy-rc.d (containers) keeps the packaged tgt service from starting; on a full
# system the package may start a tgtd on 0.0.0.0:3260, which this script leaves alone.
need_apt=()
command -v tgtd >/dev/null || need_apt+=(tgt)
command -v iscsi-perf >/dev/null || need_apt+=(libiscsi-bin)
command -v python3 >/dev/null || need_apt+=(python3)
apt_install "${need_apt[@]}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== cargo build --release (vvold, vvold-load)"
  cargo build --release --bin vvold --bin vvold-load
fi
VVOLD=$ROOT/target/release/vvold
LOAD=$ROOT/target/release/vvold-load
# What one sleep and wake-up costs here (benches/wake.rs), and the fastest a bare 4 KiB
# exchange goes over loopback TCP (benches/loopback.rs), on the idle machine before any target
# starts: the floors under CPU per I/O wherever a target sleeps between commands, and under
# latency at QD 1.
WAKE=""
if [ "${WAKE_PROBE:-1}" = 1 ]; then
  echo "== cargo bench --bench wake / loopback (this machine's wake-up cost and QD 1 floor)"
  WAKE=$({ cargo bench -q --bench wake; cargo bench -q --bench loopback; } 2>/dev/null |
    grep -E '^(wake-up|guest|loopback)' || true)
fi
TCK=$(getconf CLK_TCK)

# ---- bookkeeping: everything started here is stopped by PID ----
TMP=$(mktemp -d /tmp/vvold-bench.XXXXXX)
PIDS=()        # processes to stop, in order
SUDO_PIDS=()   # those that need sudo to signal
CLIENT_PID=""
TGT_CTL=""
TGTADM=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$CLIENT_PID"
  # tgtd ignores SIGTERM while it has targets; its own shutdown is: offline, delete, exit.
  if [ -n "$TGT_CTL" ] && [ -n "$TGTADM" ]; then
    $SUDO "$TGTADM" -C "$TGT_CTL" --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
    $SUDO "$TGTADM" -C "$TGT_CTL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
    $SUDO "$TGTADM" -C "$TGT_CTL" --op delete --mode system >/dev/null 2>&1 || true
  fi
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  for p in "${SUDO_PIDS[@]}"; do stop_pid "$p" sudo; done
  wait 2>/dev/null || true
  if [ -n "$TGT_CTL" ]; then
    $SUDO rm -f "/var/run/tgtd/socket.$TGT_CTL" "/var/run/tgtd/socket.$TGT_CTL.lock"
  fi
  if [ $rc -ne 0 ]; then
    echo "bench.sh failed (exit $rc); logs in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The PID of the process named $2 among the descendants of $1: the real daemon when it was
# started through sudo, which may run it under a monitor process of its own (use_pty).
descendant_named() {
  local root=$1 name=$2 f
  for _ in $(seq 50); do
    local -A parent_of=()
    local pids=()
    for f in /proc/[0-9]*/stat; do
      local st
      { read -r -a st < "$f"; } 2>/dev/null || continue
      parent_of[${st[0]}]=${st[3]}
      pids+=("${st[0]}")
    done
    local pid up comm
    for pid in "${pids[@]}"; do
      { read -r comm < "/proc/$pid/comm"; } 2>/dev/null || continue
      [ "$comm" = "$name" ] || continue
      up=$pid
      while [ -n "$up" ] && [ "$up" != 0 ] && [ "$up" != "$root" ]; do up=${parent_of[$up]:-}; done
      if [ "$up" = "$root" ]; then echo "$pid"; return 0; fi
    done
    sleep 0.1
  done
  return 1
}

# CPU ticks (utime + stime, all threads) of PID into TICKS; builtins only, nothing forked.
cpu_ticks() {
  local st
  read -r -a st < "/proc/$1/stat"
  TICKS=$((st[13] + st[14]))
}

# CPU seconds the shell's finished children have used, into CHILD_CPU (bash `times`, no fork).
child_cpu() {
  times > "$TMP/times"
  local _a _b cu cs
  { read -r _a _b; read -r cu cs; } < "$TMP/times"
  CHILD_CPU="$cu $cs"
}

# Runs a client (the command after PID and OUTFILE, output to OUTFILE) as CLIENT_PID and samples
# around it the target's CPU ticks (T0, T1), the clock (S0, S1) and the CPU of the shell's
# children (C0, C1); RC is the client's exit status.
measure() { # PID OUTFILE command...
  local pid=$1 out=$2
  shift 2
  child_cpu; C0=$CHILD_CPU
  cpu_ticks "$pid"; T0=$TICKS
  S0=$(date +%s.%N)
  "${CLIENT_PIN[@]}" "$@" > "$out" 2>&1 &
  CLIENT_PID=$!
  RC=0
  wait "$CLIENT_PID" || RC=$?
  CLIENT_PID=""
  cpu_ticks "$pid"; T1=$TICKS
  S1=$(date +%s.%N)
  child_cpu; C1=$CHILD_CPU
}

failed_row() { # workload client target
  printf '%s\t%s\t%s\t0\t0\t-\t-\t-\t-\t-\tfailed\n' "$1" "$2" "$3" >> "$OUT"
}

# ---- targets ----
IQN_TGT=iqn.2026-11.io.vvold.bench:tgt
IQN_NULL=iqn.2026-11.io.vvold.bench:null
IQN_RAM=iqn.2026-11.io.vvold.bench:ram
INITIATOR=iqn.2026-11.io.vvold.bench:client

TGTADM=$(command -v tgtadm)
TGT_PORT=$(free_port)
# tgtd's "control port" names its management socket, /var/run/tgtd/socket.N, and must be
# below 32768; take one no other tgtd uses.
TGT_CTL=$((TGT_PORT % 30000 + 1000))
while [ -e "/var/run/tgtd/socket.$TGT_CTL" ]; do TGT_CTL=$((TGT_CTL + 1)); done
echo "== tgtd on 127.0.0.1:$TGT_PORT (control port $TGT_CTL)"
$SUDO "${TARGET_PIN[@]}" tgtd -f -C "$TGT_CTL" --iscsi "portal=127.0.0.1:$TGT_PORT" > "$TMP/tgtd.log" 2>&1 &
TGT_PID=$!
if [ -n "$SUDO" ]; then
  TGT_PID=$(descendant_named "$TGT_PID" tgtd)
  SUDO_PIDS+=("$TGT_PID")
else
  PIDS+=("$TGT_PID")
fi
wait_port "$TGT_PORT" "$TGT_PID" tgtd "$TMP/tgtd.log"
tgtadm() { $SUDO "$TGTADM" -C "$TGT_CTL" --lld iscsi "$@"; }
tgtadm --mode target --op new --tid 1 --targetname "$IQN_TGT"
# LUN 0 of a tgt target is its own controller LU; the disk is LUN 1. The null store ignores
# the path and always reports 1 TiB (tgt usr/bs_null.c); reads send full-length Data-In of
# whatever its buffer holds (vvold's null backend zero-fills), writes vanish.
tgtadm --mode logicalunit --op new --tid 1 --lun 1 --bstype null --backing-store /dev/null
tgtadm --mode target --op bind --tid 1 --initiator-address ALL
if [ "${TGT_DEFAULTS:-0}" != 1 ]; then
  # tgt defaults to 8 KiB PDUs both ways, InitialR2T=Yes and one R2T: give it what vvold
  # offers, so the rows compare implementations rather than defaults.
  for kv in MaxRecvDataSegmentLength=262144 MaxXmitDataSegmentLength=262144 \
            FirstBurstLength=262144 MaxBurstLength=1048576 InitialR2T=No ImmediateData=Yes \
            MaxOutstandingR2T=8; do
    tgtadm --mode target --op update --tid 1 --name "${kv%%=*}" --value "${kv#*=}"
  done
fi

start_vvold() { # NAME IQN BACKEND SIZE -> PORT_<NAME>, PID_<NAME>
  local name=$1 iqn=$2 backend=$3 size=$4
  local port ctl cc_line="" poll_line=""
  [ -n "${VVOLD_POLL_US:-}" ] && poll_line="poll_us = $VVOLD_POLL_US"
  case "${TCP_CC:-}" in
    "") ;;
    system) cc_line='tcp_congestion_control = ""' ;;
    *) cc_line="tcp_congestion_control = \"$TCP_CC\"" ;;
  esac
  port=$(free_port); ctl=$(free_port)
  cat > "$TMP/$name.toml" <<EOF
listen = ["127.0.0.1:$port"]

[iscsi]
$cc_line
$poll_line
max_recv_data_segment_length = 262144
max_burst_length = 1048576
first_burst_length = 262144
immediate_data = true
initial_r2t = false
queue_depth = 128

[[target]]
name = "$iqn"

[[target.lun]]
id = 0
backend = "$backend"
size = "$size"

[control]
listen = "127.0.0.1:$ctl"
EOF
  echo "== vvold ($backend) on 127.0.0.1:$port"
  "${TARGET_PIN[@]}" "$VVOLD" --config "$TMP/$name.toml" --data-dir "$TMP/$name-data" \
    --listen "127.0.0.1:$port" --control-listen "127.0.0.1:$ctl" --log-level warn \
    > "$TMP/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$port" "$pid" "vvold ($backend)" "$TMP/$name.log"
  printf -v "PORT_$name" %s "$port"
  printf -v "PID_$name" %s "$pid"
}
start_vvold null "$IQN_NULL" null 1TiB
start_vvold ram "$IQN_RAM" ram 1GiB

# name portal iqn lun pid
TARGETS=(
  "tgt 127.0.0.1:$TGT_PORT $IQN_TGT 1 $TGT_PID"
  "vvold-null 127.0.0.1:$PORT_null $IQN_NULL 0 $PID_null"
  "vvold-ram 127.0.0.1:$PORT_ram $IQN_RAM 0 $PID_ram"
)

# Fill the RAM LUN once, so reads copy real memory rather than take the unwritten-zero path.
# One session writes sequentially from block 0, so a run that wrote at least the LUN's size has
# covered all of it; a run that did not (first touches of RAM are slow, the machine may be busy)
# is repeated with twice the time. Checked, not assumed: a partly written LUN makes the ram rows
# look cheaper than they are.
echo "== filling the ram LUN (1 GiB, sequential 1 MiB writes)"
fill_secs=4
while :; do
  "$LOAD" --portal "127.0.0.1:$PORT_ram" --target "$IQN_RAM" --initiator "$INITIATOR" \
    --volume 0 --rw write --bs 1m --qd 4 --seconds "$fill_secs" --warmup 0 --json > "$TMP/fill.json"
  if python3 - "$TMP/fill.json" "$fill_secs" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
if t["errors"]:
    sys.exit(f"the ram LUN fill had {t['errors']} errors")
print(f"   {t['bytes'] / (1 << 20):.0f} MiB written in {sys.argv[2]} s")
sys.exit(0 if t["bytes"] >= 1 << 30 else 3)
EOF
  then break
  else
    rc=$?
    if [ "$rc" != 3 ] || [ "$fill_secs" -ge 32 ]; then
      echo "the ram LUN could not be filled" >&2
      exit 1
    fi
    fill_secs=$((fill_secs * 2))
  fi
done

# ---- workloads ----
# name | vvold-load arguments (fio's too, see fio_args) | iscsi-perf arguments ("-": it cannot) |
# queue depth in total
WORKLOADS=(
  "randread-4k-qd1|--rw randread --bs 4k --qd 1|-r -m 1 -b 8|1"
  "randread-4k-qd16|--rw randread --bs 4k --qd 16|-r -m 16 -b 8|16"
  "randread-4k-qd64|--rw randread --bs 4k --qd 64|-r -m 64 -b 8|64"
  "randwrite-4k-qd1|--rw randwrite --bs 4k --qd 1|-|1"
  "randwrite-4k-qd16|--rw randwrite --bs 4k --qd 16|-|16"
  "randwrite-4k-qd64|--rw randwrite --bs 4k --qd 64|-|64"
  "read-128k-qd8|--rw read --bs 128k --qd 8|-m 8 -b 256|8"
  "randread-4k-16x8|--rw randread --bs 4k --qd 8 --sessions 16|-|128"
)

mkdir -p "$ROOT/target/bench"
OUT=${OUT:-$ROOT/target/bench/bench-$(date +%Y%m%d-%H%M%S).tsv}
printf 'workload\tclient\ttarget\tiops\tmbps\tmean_us\tp99_us\ttarget_cpu_us_per_io\ttarget_cpu_pct\tclient_cpu_us_per_io\terrors\n' > "$OUT"

run_load() { # workload args target-line
  local w=$1 args=$2 t=$3
  local name portal iqn lun pid
  read -r name portal iqn lun pid <<< "$t"
  # shellcheck disable=SC2086
  "${CLIENT_PIN[@]}" "$LOAD" --portal "$portal" --target "$iqn" --initiator "$INITIATOR" \
    --volume "$lun" $args \
    --seconds "$DURATION" --warmup "$WARMUP" --target-pid "$pid" --poll-us "$CLIENT_POLL_US" \
    --json > "$TMP/load.json" 2> "$TMP/load.err" &
  CLIENT_PID=$!
  if ! wait "$CLIENT_PID"; then
    CLIENT_PID=""
    echo "vvold-load failed against $name:" >&2; cat "$TMP/load.err" >&2
    failed_row "$w" vvold-load "$name"
    return 0
  fi
  CLIENT_PID=""
  python3 - "$TMP/load.json" "$DURATION" "$w" "$name" >> "$OUT" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
t = j["total"]
secs = float(j["seconds"])
tcpu = j.get("target_cpu_s")
print("\t".join(str(x) for x in [
    sys.argv[3], "vvold-load", sys.argv[4], t["iops"], t["mbps"], t["lat_us"]["mean"],
    t["lat_us"]["p99"], j.get("target_cpu_us_per_io", "-"),
    "-" if tcpu is None else round(100 * tcpu / secs, 1),
    j["client_cpu_us_per_io"], t["errors"]]))
EOF
}

# The row of a client measured from outside (iscsi-perf, fio), from measure's samples. For both,
# the target's CPU per I/O is its CPU time over the client's run divided by the I/Os of that run,
# IOPS x the seconds it ran I/O, and its CPU % is over those seconds.
outside_row() { # workload client target, then iscsi-perf: IOPS QD BS; fio: JSON
  python3 - "$TCK" "$T0" "$T1" "$S0" "$S1" "$C0" "$C1" "$WARMUP" "$@" >> "$OUT" <<'EOF'
import json, re, sys
tck, t0, t1, s0, s1, c0, c1, warmup, w, client, name = sys.argv[1:12]
args = sys.argv[12:]
def secs(s):  # bash `times`: "0m1.234s 0m0.567s"
    return sum(int(m) * 60 + float(x) for m, x in re.findall(r"(\d+)m([\d.]+)s", s))
wall = float(s1) - float(s0)
if client == "iscsi-perf":
    iops, qd, bs = float(args[0]), int(args[1]), int(args[2])
    mbps, mean, p99, errors = round(iops * bs / 1e6, 2), "~%.1f" % (qd / iops * 1e6), "-", 0
    run = wall  # I/O from start to end; its CPU is the process's whole run
    cli = (secs(c1) - secs(c0)) * 1e6 / (iops * wall)
else:  # fio: one entry for all numjobs (group_reporting); read or write
    out = open(args[0]).read()  # its notes ("queue depth will be capped at 1") may come first
    j = json.loads(out[out.index("{\n"):])["jobs"][0]
    d = j["read"] if j["read"]["total_ios"] else j["write"]
    iops, ios = d["iops"], d["total_ios"]
    mbps, mean = round(d["bw_bytes"] / 1e6, 2), round(d["lat_ns"]["mean"] / 1e3, 1)
    p99 = round(next(v for k, v in d["lat_ns"]["percentile"].items() if float(k) == 99) / 1e3, 1)
    errors = j.get("total_err", 1 if j["error"] else 0)
    run = float(warmup) + ios / iops  # ramp_time + measured, not fio's start-up and logins
    # usr_cpu and sys_cpu: % of job_runtime (ms, summed over the jobs), measured period only
    cli = (j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] * 1e3 / ios
tcpu = (int(t1) - int(t0)) / int(tck)
print("\t".join(str(x) for x in [
    w, client, name, round(iops, 1), mbps, mean, p99, round(tcpu * 1e6 / (iops * run), 2),
    round(100 * tcpu / run, 1), round(cli, 2), errors]))
EOF
}

run_perf() { # workload args qd bs target-line
  local w=$1 args=$2 qd=$3 bs=$4 t=$5
  local name portal iqn lun pid
  read -r name portal iqn lun pid <<< "$t"
  # shellcheck disable=SC2086
  measure "$pid" "$TMP/perf.out" \
    iscsi-perf -i "$INITIATOR" $args -t "$DURATION" "iscsi://$portal/$iqn/$lun"
  local iops
  iops=$(tr '\r' '\n' < "$TMP/perf.out" | sed -n 's/^iops average \([0-9]*\).*/\1/p' | tail -1)
  if [ $RC -ne 0 ] || [ -z "$iops" ]; then
    echo "iscsi-perf failed against $name (exit $RC):" >&2; tr '\r' '\n' < "$TMP/perf.out" | tail -5 >&2
    failed_row "$w" iscsi-perf "$name"
    return 0
  fi
  outside_row "$w" iscsi-perf "$name" "$iops" "$qd" "$bs"
}

# fio's options for a row's vvold-load arguments.
fio_args() {
  local a i out=""
  read -r -a a <<< "$1"
  for ((i = 0; i < ${#a[@]}; i += 2)); do
    case "${a[i]}" in
      --rw) out+=" --rw=${a[i+1]}" ;;
      --bs) out+=" --bs=${a[i+1]}" ;;
      --qd) out+=" --iodepth=${a[i+1]}" ;;
      --sessions) out+=" --numjobs=${a[i+1]}" ;;
      *) echo "fio_args: no fio option for ${a[i]}" >&2; return 1 ;;
    esac
  done
  echo "${out# }"
}

run_fio() { # workload vvold-load-args target-line
  local w=$1 t=$3
  local name portal iqn lun pid fargs
  read -r name portal iqn lun pid <<< "$t"
  fargs=$(fio_args "$2")
  local url="iscsi://$portal/$iqn/$lun"
  # fio splits file names at ':', hence '\:'. norandommap and randrepeat=0 as vvold-load: no
  # bitmap of the (1 TiB) LUN per job, and not the same offsets every run.
  # shellcheck disable=SC2086
  measure "$pid" "$TMP/fio.err" \
    "$FIO" --output-format=json --output="$TMP/fio.json" --name="$w" \
    --ioengine=libiscsi --initiator="$INITIATOR" --filename="${url//:/\\:}" \
    --time_based=1 --runtime="$DURATION" --ramp_time="$WARMUP" --group_reporting=1 \
    --lat_percentiles=1 --percentile_list=99 --norandommap=1 --randrepeat=0 $fargs
  if [ $RC -ne 0 ]; then
    echo "fio failed against $name (exit $RC):" >&2; tail -5 "$TMP/fio.err" >&2
    failed_row "$w" fio "$name"
    return 0
  fi
  outside_row "$w" fio "$name" "$TMP/fio.json"
}

echo "== $(date -u +%FT%TZ): ${DURATION}s per row, vvold-load warm-up ${WARMUP}s; rows go to $OUT"
for wl in "${WORKLOADS[@]}"; do
  IFS='|' read -r w largs pargs qd <<< "$wl"
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $w "* ]]; then continue; fi
  bs=4096; [[ $w == *128k* ]] && bs=131072
  for client in $CLIENTS; do
    [ "$client" = iscsi-perf ] && [ "$pargs" = - ] && continue
    for t in "${TARGETS[@]}"; do
      printf '   %-18s %-10s %s\n' "$w" "$client" "${t%% *}"
      case "$client" in
        vvold-load) run_load "$w" "$largs" "$t" ;;
        iscsi-perf) run_perf "$w" "$pargs" "$qd" "$bs" "$t" ;;
        fio) run_fio "$w" "$largs" "$t" ;;
      esac
    done
  done
done

# ---- the table ----
echo
echo "vvold vs tgt on loopback: $(date -u +%F), $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)),"
fio_version=""
if [[ " $CLIENTS " == *" fio "* ]]; then fio_version=" $("$FIO" --version) (libiscsi engine),"; fi
echo "kernel $(uname -r), $(tgtd -V 2>/dev/null | head -1 || echo tgt), vvold $(git rev-parse --short HEAD 2>/dev/null || echo '?'),$fio_version"
echo "${DURATION}s per row, PIN=$PIN, vvold-load --poll-us $CLIENT_POLL_US, vvold poll_us ${VVOLD_POLL_US:-100 (its default)}; target CPU = utime+stime of the target process per I/O; x = vvold / tgt, same client"
vvold_cc=${TCP_CC:-cubic (its default)}
[ "$vvold_cc" = system ] && vvold_cc="the system's"
echo "TCP congestion control: system $(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo '?') (tgt, clients), vvold $vvold_cc"
if [ -n "$WAKE" ]; then echo "$WAKE"; fi
echo
python3 - "$OUT" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def num(s):
    try:
        return float(str(s).lstrip("~"))
    except ValueError:
        return None
base = {(r["workload"], r["client"]): r for r in rows if r["target"] == "tgt"}
hdr = ("workload", "client", "target", "IOPS", "MB/s", "mean µs", "p99 µs",
       "tgt µs/IO", "tgt CPU%", "cli µs/IO", "x IOPS", "x mean", "x CPU/IO", "err")
fmt = "{:<18} {:<10} {:<10} {:>9} {:>8} {:>9} {:>8} {:>9} {:>8} {:>9} {:>7} {:>7} {:>8} {:>4}"
print(fmt.format(*hdr))
last = None
for r in rows:
    key = (r["workload"], r["client"])
    if last is not None and key != last:
        print()
    last = key
    b = base.get(key)
    def ratio(col):
        if b is None or r["target"] == "tgt":
            return ""
        x, y = num(r[col]), num(b[col])
        return "%.2f" % (x / y) if x is not None and y else ""
    iops = num(r["iops"])
    print(fmt.format(r["workload"], r["client"], r["target"],
                     "%.0f" % iops if iops is not None else r["iops"], r["mbps"], r["mean_us"],
                     r["p99_us"], r["target_cpu_us_per_io"], r["target_cpu_pct"],
                     r["client_cpu_us_per_io"], ratio("iops"), ratio("mean_us"),
                     ratio("target_cpu_us_per_io"), r["errors"]))
EOF
echo
echo "rows: $OUT"
