#!/usr/bin/env python3
"""QoS acceptance scenarios (design study section 7) against the real daemon on loopback.

Run through scripts/qos-check.sh, which builds the release binaries first. Starts two vvold
daemons (QoS on, QoS off) on free 127.0.0.1 ports, creates and binds VVols with vvolctl,
drives them with vvold-load over real iSCSI sessions, and prints every measured figure next
to its target. Exits 1 if a target is missed. Stops what it started by PID.

Scenarios: A1 caps (8 VVols at 1000 IOPS), A3 no credit after 30 s idle, A4 a 25 %
reservation against 7 unlimited neighbours (and the same with QoS off, which must fail),
A5 over-committed reservations share in proportion and report InsufficientThroughput,
A9 QoS overhead on the null backend.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("VVOLD_BIN", "target/release")
SECS = int(os.environ.get("QOS_SECONDS", "10"))
WARMUP = int(os.environ.get("QOS_WARMUP", "3"))
CAPACITY = int(os.environ.get("QOS_CAPACITY", "8000"))
# QOS_PIN=1: A9 runs with both daemons and the client on the last CPU allowed, where identical runs
# differ by about 3 % instead of the 10 % or more of unpinned runs on a small VM, so the few
# per cent QoS costs show (the daemons keep that affinity afterwards; A9 runs last).
PIN = os.environ.get("QOS_PIN", "0") == "1"
TARGET = "iqn.2026-11.io.vvold:qos"
HOST = "iqn.2026-11.io.vvold:load"

results = []  # (id, what, measured, target, ok)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(iscsi_port, api_port, qos_on):
    return f"""
listen = ["127.0.0.1:{iscsi_port}"]

[qos]
enabled = {"true" if qos_on else "false"}

[[target]]
name = "{TARGET}"

# A9: the target's own overhead, capped far above what it can do.
[[target.lun]]
id = 0
backend = "null"
size = "16GiB"
upper_iops = 1000000

[[target.pe]]
id = 254

# Unsaturated (A1, A3).
[[container]]
name = "mem"
backend = "ram"
capacity = "64GiB"

# A backend of known capacity, so reservations meet contention (A4, A5).
[[container]]
name = "disk"
backend = "rated"
capacity = "64GiB"
rated_iops = {CAPACITY}
rated_latency_us = 1000
window = 32

[control]
listen = "127.0.0.1:{api_port}"
initiators = ["iqn.2026-11.io.vvold:control"]
"""


class Daemon:
    def __init__(self, root, name, qos_on):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{free_port()}"
        cfg = os.path.join(self.dir, "vvold.toml")
        with open(cfg, "w") as f:
            f.write(config(self.port, self.api.rsplit(":", 1)[1], qos_on))
        self.log = open(os.path.join(self.dir, "vvold.log"), "w")
        self.proc = subprocess.Popen(
            [f"{BIN}/vvold", "--config", cfg, "--data-dir", os.path.join(self.dir, "data"),
             "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                socket.create_connection(("127.0.0.1", int(self.api.rsplit(":", 1)[1])), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"vvold did not start; see {self.log.name}")
                time.sleep(0.05)

    def ctl(self, *args):
        out = subprocess.run([f"{BIN}/vvolctl", "--url", self.api, "--json", *map(str, args)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"vvolctl {' '.join(map(str, args))}: {out.stderr.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def vvol(self, container, upper=None, lower=None):
        v = self.ctl("vvol", "create", "--container", container, "--size", "1GiB")
        args = []
        if upper:
            args += ["--upper", upper]
        if lower:
            args += ["--lower", lower]
        if args:
            self.ctl("qos", "set", v["id"], *args)
        b = self.ctl("bind", v["id"], "--host", HOST)
        return v["id"], b["lun"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load(d, volumes, seconds=SECS, warmup=WARMUP, background=False, cpu=None):
    cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + [f"{BIN}/vvold-load", "--portal", f"127.0.0.1:{d.port}", "--target", TARGET,
           "--initiator", HOST, "--seconds", str(seconds), "--warmup", str(warmup), "--json"]
    for v in volumes:
        cmd += ["--volume", v]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if background:
        return p
    return finish(p)


def finish(p):
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"vvold-load failed: {err.strip()}")
    r = json.loads(out)
    errors = sum(v["errors"] for v in r["volumes"])
    if errors:
        sys.exit(f"vvold-load saw {errors} errors: {r['volumes']}")
    return r


def check(ident, what, measured, target, ok):
    results.append((ident, what, measured, target, ok))
    print(f"  {ident:<4} {what:<58} {measured:<22} {target:<20} {'PASS' if ok else 'FAIL'}",
          flush=True)


def a1(on):
    print(f"A1: 8 VVols capped at 1000 IOPS, 4 KiB random reads at QD 32, backend unsaturated "
          f"({SECS} s measured)", flush=True)
    vols = [on.vvol("mem", upper=1000)[1] for _ in range(8)]
    r = load(on, [f"{lun},qd=32" for lun in vols])
    worst10 = max(abs(v["iops"] / 1000 - 1) for v in r["volumes"])
    worst1 = max(abs(n / 1000 - 1) for v in r["volumes"] for n in v["per_second"])
    means = ", ".join(f"{v['iops']:.0f}" for v in r["volumes"])
    print(f"       per-volume IOPS over {SECS} s: {means}")
    check("A1", f"worst volume error over the {SECS} s window", f"{worst10 * 100:+.2f}%",
          "within ±2%", worst10 <= 0.02)
    check("A1", "worst volume error in any 1 s window", f"{worst1 * 100:.2f}%",
          "within ±2% (study)", worst1 <= 0.02)


def a3(on, idle_vol, created):
    wait = 30 - (time.time() - created)
    print(f"A3: a VVol capped at 1000 IOPS, idle for 30 s, then QD 64" +
          (f" (waiting {wait:.0f} s more)" if wait > 0 else ""), flush=True)
    if wait > 0:
        time.sleep(wait)
    r = load(on, [f"{idle_vol},qd=64"], seconds=3, warmup=0)
    first = r["volumes"][0]["per_second"][0]
    check("A3", "I/Os in the first second after 30 s idle", str(first), "<= 1010 (1.01 x cap)",
          first <= 1010)


def a4(d, label, expect_pass):
    r_vol = d.vvol("disk", lower=CAPACITY // 4)[1]
    noisy = [d.vvol("disk")[1] for _ in range(7)]
    r = load(d, [f"{r_vol},qd=32"] + [f"{n},qd=64" for n in noisy])
    res = r["volumes"][0]
    total = r["total"]["iops"]
    reservation = CAPACITY // 4
    share10 = res["iops"] / reservation
    share1 = min(res["per_second"]) / reservation
    print(f"       {label}: reserved volume {res['iops']:.0f} IOPS of {total:.0f} total "
          f"(capacity {CAPACITY}); noisy mean {statistics.mean(v['iops'] for v in r['volumes'][1:]):.0f}")
    if expect_pass:
        check("A4", f"reserved volume, {SECS} s window, share of R={reservation}",
              f"{share10 * 100:.1f}%", ">= 98%", share10 >= 0.98)
        check("A4", "reserved volume, worst 1 s window", f"{share1 * 100:.1f}%", ">= 95% (study)",
              share1 >= 0.95)
    else:
        check("A4-", f"QoS off (negative control): {SECS} s share of R", f"{share10 * 100:.1f}%",
              "< 50% (must fail)", share10 < 0.5)


def a5(on):
    reservations = [CAPACITY * 2 * k // 10 for k in (1, 2, 3, 4)]
    print(f"A5: 4 VVols with lower limits {reservations} (sum = 2 x capacity {CAPACITY}), QD 64",
          flush=True)
    ids, luns = zip(*(on.vvol("disk", lower=r) for r in reservations))
    p = load(on, [f"{lun},qd=64" for lun in luns], background=True)
    time.sleep(WARMUP + SECS - 2)
    report = on.ctl("qos", "show")
    r = finish(p)
    total = r["total"]["iops"]
    worst = 0.0
    parts = []
    for v, res in zip(r["volumes"], reservations):
        want = total * res / sum(reservations)
        err = v["iops"] / want - 1
        worst = max(worst, abs(err))
        parts.append(f"{v['iops']:.0f}/{want:.0f}")
    print(f"       got/proportional: {', '.join(parts)} (total {total:.0f})")
    check("A5", "worst share vs proportional to R", f"{worst * 100:.2f}%", "within ±3%",
          worst <= 0.03)
    status = {v["vvol"]: v["status"] for v in report["volumes"] if v.get("vvol")}
    flagged = sum(status.get(i) == "InsufficientThroughput" for i in ids)
    check("A5", "volumes reporting InsufficientThroughput under load", f"{flagged}/4", "4/4",
          flagged == 4)
    pool = next(p for p in report["pools"] if p["name"] == "disk")
    print(f"       pool 'disk': reservation-clock lag {pool['reservation_lag_ms']:.0f} ms, "
          f"units by phase: reservation {pool['reservation_units']}, weight {pool['weight_units']}")


def a9(on, off):
    # The last CPU this process may use: a cpuset can leave out the machine's last one.
    cpu = max(os.sched_getaffinity(0)) if PIN else None
    where = f", daemons and client pinned to CPU {cpu}" if PIN else ""
    print("A9: QoS overhead on the null backend (LUN 0, caps far above reach), 4 KiB random "
          f"reads, 2 sessions x QD 16; 5 alternating on/off pairs{where}", flush=True)
    if PIN:
        for d in (on, off):
            # -a: every thread of the daemon, its network threads included.
            subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(d.proc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
    runs = {"on": [], "off": []}
    # Five alternating pairs: run-to-run noise on a 2-core VM is larger than the cost measured.
    for _ in range(5):
        for name, d in (("on", on), ("off", off)):
            r = load(d, ["0,qd=16,sessions=2"], seconds=5, warmup=1, cpu=cpu)
            runs[name].append(r["total"]["iops"])
    on_iops, off_iops = statistics.median(runs["on"]), statistics.median(runs["off"])
    print(f"       IOPS on: {', '.join(f'{x:.0f}' for x in runs['on'])}; "
          f"off: {', '.join(f'{x:.0f}' for x in runs['off'])}")
    ratio = on_iops / off_iops
    check("A9", "median IOPS with QoS on / off", f"{ratio * 100:.1f}%", ">= 97%", ratio >= 0.97)


def main():
    root = tempfile.mkdtemp(prefix="vvold-qos-")
    on = Daemon(root, "on", True)
    off = Daemon(root, "off", False)
    try:
        print(f"vvold QoS check: {SECS} s windows, rated capacity {CAPACITY} IOPS, data in {root}\n")
        idle_vol = on.vvol("mem", upper=1000)[1]
        created = time.time()
        a1(on)
        print(f"A4: R = {CAPACITY // 4} (25% of capacity) at QD 32 against 7 unlimited "
              f"neighbours at QD 64", flush=True)
        a4(on, "QoS on", True)
        a3(on, idle_vol, created)
        a4(off, "QoS off", False)
        a5(on)
        a9(on, off)
    finally:
        on.stop()
        off.stop()
    failed = [r for r in results if not r[4]]
    print(f"\n{len(results) - len(failed)}/{len(results)} targets met")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
