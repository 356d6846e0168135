#!/usr/bin/env python3
"""Scale, fairness and bounded memory (issue 6 item 4) against the real daemon on loopback.

Run through scripts/scale.sh, which builds the release binaries and sets SCALE_SECONDS and
SCALE_WARMUP. Starts one vvold on free 127.0.0.1 ports, creates 1,000 VVols and binds them for
4 hosts over 2 PEs through the HTTP API, drives them with vvold-load over real iSCSI sessions
and prints every measured figure next to its target. Exits 1 if a target is missed. Stops what
it started by PID (also on SIGTERM, which scale.sh sends on Ctrl-C).

Nothing is written before the reads, on LUN 1 or the VVols (1,000 x 64 MiB would not fit in
this machine's memory): a RAM disk answers a never-written chunk by zero-filling the buffer, so
both modes compare routing, per-volume state and the network path, not reading RAM-disk data
(which costs the same page walk in both; see README, "ram backend within 10 % of null").
"""

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("VVOLD_BIN", "target/release")
SECS = int(os.environ.get("SCALE_SECONDS", "10"))
WARMUP = int(os.environ.get("SCALE_WARMUP", "2"))
RSS_SLACK_MIB = float(os.environ.get("RSS_SLACK_MIB", "4"))
# Spread/single pairs: on a small VM single runs of either mode differ by 10-20 %, so the
# ratio is taken over several alternated pairs.
PAIRS = int(os.environ.get("SCALE_PAIRS", "4"))
if PAIRS < 2:
    sys.exit("SCALE_PAIRS must be at least 2 (memory is compared between the first and last)")
KEEP = os.environ.get("KEEP", "0") == "1"
# QOS=off runs the same checks with QoS (and so its per-volume telemetry) disabled, to see
# what it costs a command spread over 1,000 volumes.
QOS = os.environ.get("QOS", "on")
if QOS not in ("on", "off"):
    sys.exit("QOS must be on or off")
QOS_SECTION = "" if QOS == "on" else "[qos]\nenabled = false\n"

TARGET = "iqn.2026-11.io.vvold:scale"
HOSTS = [f"iqn.1998-01.com.vmware:esx-{i}" for i in range(1, 5)]
VVOLS = 1000
VVOL_BYTES = 64 << 20
PES = (254, 255)
SINGLE_LUN = "1"  # the 1 GiB ram LUN: the single-LUN baseline and the fairness LUN
SESSIONS, QD = 4, 8  # per vvold-load process in the scale runs
FAIR_SESSIONS, FAIR_QD = 64, 4

children = []  # every process started here, stopped by PID in stop_all()
results = []  # (check, measured, target, ok)


def on_term(signum, _frame):
    raise SystemExit(128 + signum)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(iscsi_port, api_port):
    return f"""
listen = ["127.0.0.1:{iscsi_port}"]

[[target]]
name = "{TARGET}"

[[target.lun]]
id = 0
backend = "null"
size = "16GiB"

[[target.lun]]
id = 1
backend = "ram"
size = "1GiB"

[[target.pe]]
id = {PES[0]}

[[target.pe]]
id = {PES[1]}

[[container]]
name = "mem"
backend = "ram"
capacity = "2TiB"

{QOS_SECTION}
[control]
listen = "127.0.0.1:{api_port}"
"""


def stop(p, grace=20):
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_all():
    for p in reversed(children):
        stop(p)


class Api:
    """The control API over one keep-alive HTTP connection."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def call(self, method, path, body=None):
        payload = json.dumps(body) if body is not None else None
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body=payload,
                                  headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.HTTPException, OSError):
                # The server may close an idle keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if r.status >= 300:
                sys.exit(f"{method} {path} {payload or ''}: HTTP {r.status} {data.decode(errors='replace')}")
            return json.loads(data) if data else None


class Daemon:
    def __init__(self, root):
        self.port = free_port()
        self.api_port = free_port()
        cfg = os.path.join(root, "vvold.toml")
        with open(cfg, "w") as f:
            f.write(config(self.port, self.api_port))
        self.log_path = os.path.join(root, "vvold.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [f"{BIN}/vvold", "--config", cfg, "--data-dir", os.path.join(root, "data"),
                 "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT)
        children.append(self.proc)
        self.pid = self.proc.pid
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                socket.create_connection(("127.0.0.1", self.api_port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"vvold did not start; see {self.log_path}")
                time.sleep(0.05)
        self.api = Api(self.api_port)

    def rss_kib(self):
        if self.proc.poll() is not None:
            sys.exit(f"vvold exited (status {self.proc.returncode}); see {self.log_path}")
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        sys.exit("no VmRSS in /proc/PID/status")


def load(d, host, volumes):
    cmd = [f"{BIN}/vvold-load", "--portal", f"127.0.0.1:{d.port}", "--target", TARGET,
           "--initiator", host, "--seconds", str(SECS), "--warmup", str(WARMUP), "--json",
           "--target-pid", str(d.pid)]
    for v in volumes:
        cmd += ["--volume", v]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children.append(p)
    return p


def finish(p):
    out, err = p.communicate()
    children.remove(p)
    if p.returncode != 0:
        sys.exit(f"vvold-load failed: {err.strip()}")
    return json.loads(out)


def run_all(d, jobs):
    """jobs: [(host, [volume specs])], all at once; their reports in the same order."""
    procs = [load(d, host, vols) for host, vols in jobs]
    return [finish(p) for p in procs]


def summarize(reports):
    """Total IOPS, I/Os, errors, client and target CPU µs per I/O of processes run together."""
    ios = sum(r["total"]["ios"] for r in reports)
    iops = sum(r["total"]["iops"] for r in reports)
    errors = sum(r["total"]["errors"] for r in reports)
    client_cpu = sum(r["client_cpu_s"] for r in reports)
    # Each process samples the target over (nearly) the same window: the target's CPU for all
    # of them together is about the mean of what they saw, not the sum.
    target_cpu = statistics.mean(r.get("target_cpu_s", 0.0) for r in reports)
    per_io = lambda cpu: cpu * 1e6 / ios if ios else 0.0
    first_error = next((v.get("first_error") for r in reports for v in r["volumes"]
                        if v.get("first_error")), None)
    secs = reports[0]["seconds"]
    return {"ios": ios, "iops": iops, "errors": errors, "client_us": per_io(client_cpu),
            "target_us": per_io(target_cpu), "first_error": first_error,
            # CPUs that clients and target kept busy together: well below the machine's count
            # means the run was limited by wake-ups and scheduling, not by work per I/O.
            "cpus": (client_cpu + target_cpu) / secs}


def check(what, measured, target, ok):
    results.append((what, measured, target, ok))


def mib(kib):
    return kib / 1024


def main():
    root = tempfile.mkdtemp(prefix="vvold-scale-")
    ok = False
    try:
        ok = scenario(root)
    finally:
        stop_all()
        if ok and not KEEP:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"(config, logs and LUN lists kept in {root})")
    sys.exit(0 if ok else 1)


def scenario(root):
    d = Daemon(root)
    print(f"vvold scale check: {SECS} s measured after {WARMUP} s warm-up per run, QoS {QOS}; "
          f"vvold PID {d.pid} on 127.0.0.1:{d.port}, API on :{d.api_port}, data in {root}",
          flush=True)
    time.sleep(0.5)
    rss = {"start": d.rss_kib()}

    # ---- 1,000 VVols, 250 bound for each host, alternating PEs ----
    t0 = time.time()
    ids = []
    for _ in range(VVOLS):
        v = d.api.call("POST", "/api/v1/vvols",
                       {"container": "mem", "size": VVOL_BYTES, "type": "data"})
        ids.append(v["id"])
    t1 = time.time()
    per_host = VVOLS // len(HOSTS)
    lun_files = []
    for hi, host in enumerate(HOSTS):
        luns = []
        for k in range(hi * per_host, (hi + 1) * per_host):
            b = d.api.call("POST", "/api/v1/bind",
                           {"vvol": ids[k], "host": host, "pe": PES[k % len(PES)]})
            luns.append(b["lun"])
        path = os.path.join(root, f"luns-esx-{hi + 1}.txt")
        with open(path, "w") as f:
            f.write(f"# {host}: {len(luns)} VVols over PEs {PES[0]} and {PES[1]}\n")
            f.write("\n".join(luns) + "\n")
        lun_files.append(path)
    t2 = time.time()
    bound = d.api.call("GET", "/api/v1/bindings")
    n_bound = len(bound) if isinstance(bound, list) else len(bound.get("bindings", []))
    print(f"created {VVOLS} VVols in {t1 - t0:.1f} s, bound them in {t2 - t1:.1f} s "
          f"({n_bound} bindings listed)", flush=True)
    if n_bound != VVOLS:
        sys.exit(f"expected {VVOLS} bindings, the API lists {n_bound}")
    rss["binds"] = d.rss_kib()

    # ---- scale: spread over 250 VVols per host vs all on one LUN, PAIRS times ----
    spread_jobs = [(h, [f"@{f},qd={QD},sessions={SESSIONS}"]) for h, f in zip(HOSTS, lun_files)]
    single_jobs = [(h, [f"{SINGLE_LUN},qd={QD},sessions={SESSIONS}"]) for h in HOSTS]
    rounds = []
    for n in range(1, PAIRS + 1):
        print(f"scale run {n}: 4 processes x {SESSIONS} sessions x QD {QD}, 4 KiB random "
              f"reads; spread over 1,000 VVols, then all on LUN {SINGLE_LUN}", flush=True)
        spread_reports = run_all(d, spread_jobs)
        single_reports = run_all(d, single_jobs)
        spread, single = summarize(spread_reports), summarize(single_reports)
        luns = sum(v["luns"] for r in spread_reports for v in r["volumes"])
        with_io = sum(v["luns_with_io"] for r in spread_reports for v in r["volumes"])
        lo = min(v["lun_ios_min"] for r in spread_reports for v in r["volumes"])
        hi = max(v["lun_ios_max"] for r in spread_reports for v in r["volumes"])
        for name, s in (("spread", spread), ("single", single)):
            print(f"  {name:<7} {s['iops']:>10,.0f} IOPS  errors {s['errors']}  client "
                  f"{s['client_us']:.2f} µs/IO  target {s['target_us']:.2f} µs/IO  "
                  f"CPUs busy {s['cpus']:.2f} of {os.cpu_count()}"
                  + (f"  first error: {s['first_error']}" if s["first_error"] else ""))
        print(f"  spread/single {spread['iops'] / single['iops'] * 100:.1f} %; {with_io} of "
              f"{luns} VVols got I/O ({lo}..{hi} I/Os each)", flush=True)
        rounds.append((spread, single, luns, with_io))
        rss[f"scale {n}"] = d.rss_kib()

    # ---- fairness: 64 sessions on one LUN ----
    print(f"fairness: {FAIR_SESSIONS} sessions x QD {FAIR_QD} on LUN {SINGLE_LUN}", flush=True)
    (fair,) = run_all(d, [(HOSTS[0], [f"{SINGLE_LUN},qd={FAIR_QD}"] * FAIR_SESSIONS)])
    per_session = [v["iops"] for v in fair["volumes"]]
    fair_errors = fair["total"]["errors"]
    f_min, f_mean, f_max = min(per_session), statistics.mean(per_session), max(per_session)
    print(f"  per-session IOPS min {f_min:,.0f} mean {f_mean:,.0f} max {f_max:,.0f} "
          f"(total {fair['total']['iops']:,.0f}, errors {fair_errors})", flush=True)
    rss["fairness"] = d.rss_kib()

    # ---- verdicts ----
    spread_iops = sum(r[0]["iops"] for r in rounds)
    single_iops = sum(r[1]["iops"] for r in rounds)
    ratio = spread_iops / single_iops
    n_runs = len(rounds)
    check(f"spread over 1,000 VVols, IOPS (mean of {n_runs} runs)",
          f"{spread_iops / n_runs:,.0f}", "", True)
    check(f"single LUN {SINGLE_LUN}, IOPS (mean of {n_runs} runs)",
          f"{single_iops / n_runs:,.0f}", "", True)
    check("spread / single-LUN IOPS", f"{ratio * 100:.1f}%", ">= 95%", ratio >= 0.95)
    pair_ratios = sorted(r[0]["iops"] / r[1]["iops"] * 100 for r in rounds)
    check("  single pairs: lowest / median / highest",
          f"{pair_ratios[0]:.1f} / {statistics.median(pair_ratios):.1f} / "
          f"{pair_ratios[-1]:.1f}%", "", True)
    # On a small VM placement and wake-ups move IOPS by tens of percent between identical
    # runs (see "CPUs busy"), often more than the spread costs; the target's CPU per I/O shows
    # that cost more directly, though the network threads' poll_us spin inflates it when CPUs
    # are idle. Informational, no target.
    t_spread = statistics.mean(r[0]["target_us"] for r in rounds)
    t_single = statistics.mean(r[1]["target_us"] for r in rounds)
    check("target CPU µs per I/O, spread / single", f"{t_spread:.2f} / {t_single:.2f} "
          f"({(t_spread / t_single - 1) * 100:+.0f}%)", "", True)
    worst_io = min(r[3] for r in rounds)
    check("VVols that got I/O (worst run)", f"{worst_io}/{VVOLS}", f"{VVOLS}/{VVOLS}",
          worst_io == VVOLS and all(r[2] == VVOLS for r in rounds))
    errs = sum(r[0]["errors"] + r[1]["errors"] for r in rounds) + fair_errors
    check("I/O errors (all runs)", str(errs), "0", errs == 0)
    check(f"fairness: {FAIR_SESSIONS} sessions, min / mean IOPS",
          f"{f_min / f_mean * 100:.1f}% ({f_min:,.0f}/{f_mean:,.0f})", ">= 50%",
          f_min >= 0.5 * f_mean)
    for k, v in rss.items():
        check(f"vvold VmRSS after {k}", f"{mib(v):.1f} MiB", "", True)
    growth = rss[f"scale {PAIRS}"] - rss["scale 1"]
    later_ios = sum(r[0]["ios"] + r[1]["ios"] for r in rounds[1:])
    check(f"VmRSS growth, scale run 1 -> {PAIRS} ({later_ios / 1e6:.1f} M I/Os)",
          f"{mib(growth):+.1f} MiB", f"<= {RSS_SLACK_MIB:g} MiB",
          mib(growth) <= RSS_SLACK_MIB)

    print()
    w = max(len(r[0]) for r in results)
    print(f"{'check':<{w}}  {'measured':<24} {'target':<12} result")
    for what, measured, target, good in results:
        verdict = ("PASS" if good else "FAIL") if target else ""
        print(f"{what:<{w}}  {measured:<24} {target:<12} {verdict}")
    failed = [r for r in results if r[2] and not r[3]]
    graded = [r for r in results if r[2]]
    print(f"\n{len(graded) - len(failed)}/{len(graded)} targets met")
    return not failed


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_term)
    main()
