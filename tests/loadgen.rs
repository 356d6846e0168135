//! `vvold-load` against the real daemon: pipelined random reads and writes over two sessions,
//! its JSON report, a volume spread over a set of LUNs, and a clean failure for a LUN that does
//! not exist.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn load(d: &Daemon) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vvold-load"));
    c.arg("--portal")
        .arg(d.addr.to_string())
        .arg("--target")
        .arg(T_MAIN)
        .arg("--initiator")
        .arg(INITIATOR);
    c
}

fn run_json(c: Command) -> serde_json::Value {
    let out = run_bounded(c, RUN_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vvold-load failed: {stderr}\n{stdout}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn f(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn random_reads_and_writes_at_qd8_over_two_sessions() {
    let mut d = Daemon::start();
    for rw in ["randread", "randwrite"] {
        let mut c = load(&d);
        c.args(["--volume", &format!("{LUN_FILE},qd=8,sessions=2")])
            .args(["--rw", rw, "--seconds", "2", "--warmup", "0.5", "--json"])
            .args(["--target-pid", &d.pid().to_string()]);
        let j = run_json(c);
        let vols = j["volumes"].as_array().expect("volumes");
        assert_eq!(vols.len(), 1, "{j}");
        let v = &vols[0];
        assert_eq!(v["lun"], "0");
        assert_eq!(v["rw"], rw);
        assert_eq!(v["qd"], 8);
        assert_eq!(v["sessions"], 2);
        assert_eq!(v["bs"], 4096);
        assert_eq!(v["capacity_bytes"].as_u64(), Some(LUN_BYTES));
        assert_eq!(v["errors"], 0, "{j}");
        let ios = v["ios"].as_u64().expect("ios");
        assert!(ios > 0, "{j}");
        assert_eq!(v["bytes"].as_u64(), Some(ios * 4096));
        let per_second: Vec<u64> = v["per_second"]
            .as_array()
            .expect("per_second")
            .iter()
            .map(|x| x.as_u64().expect("count"))
            .collect();
        assert_eq!(per_second.len(), 2, "{j}");
        assert!(per_second.iter().all(|&n| n > 0), "{j}");
        assert_eq!(per_second.iter().sum::<u64>(), ios);
        let iops = f(v, "iops");
        assert!((iops - ios as f64 / 2.0).abs() < 1.0, "{j}");
        let lat = &v["lat_us"];
        let (mean, p50, p99, p999) = (f(lat, "mean"), f(lat, "p50"), f(lat, "p99"), f(lat, "p999"));
        assert!(mean > 0.0 && p50 > 0.0, "{j}");
        assert!(p50 <= p99 && p99 <= p999, "{j}");
        assert_eq!(j["total"]["ios"].as_u64(), Some(ios));
        assert_eq!(f(&j, "seconds"), 2.0);
        assert!(f(&j, "client_cpu_s") > 0.0, "{j}");
        assert!(f(&j, "client_cpu_us_per_io") > 0.0, "{j}");
        assert!(f(&j, "target_cpu_s") > 0.0, "{j}");
        assert!(f(&j, "target_cpu_us_per_io") > 0.0, "{j}");
    }
    d.assert_alive();
}

#[test]
fn several_volumes_at_once_and_an_unknown_lun_fails_cleanly() {
    let mut d = Daemon::start();
    let mut c = load(&d);
    c.args(["--volume", &format!("{LUN_RAM},rw=write,bs=128k,qd=2")])
        .args(["--volume", &format!("{LUN_NULL},qd=4")])
        .args(["--seconds", "1", "--warmup", "0.2", "--json"]);
    let j = run_json(c);
    let vols = j["volumes"].as_array().expect("volumes");
    assert_eq!(vols.len(), 2);
    assert_eq!(vols[0]["bs"], 131_072);
    assert_eq!(vols[0]["rw"], "write");
    for v in vols {
        assert!(v["ios"].as_u64().unwrap() > 0, "{j}");
        assert_eq!(v["errors"], 0, "{j}");
    }
    let sum = vols[0]["ios"].as_u64().unwrap() + vols[1]["ios"].as_u64().unwrap();
    assert_eq!(j["total"]["ios"].as_u64(), Some(sum));

    // One volume over a set of LUNs (@FILE): every command goes to one picked at random.
    let list = d.data_dir().join("luns.txt");
    std::fs::write(
        &list,
        format!("# a set\n{LUN_RAM}\n{LUN_NULL}\n{LUN_FILE}\n"),
    )
    .unwrap();
    let mut c = load(&d);
    c.args(["--volume", &format!("@{},qd=8,sessions=2", list.display())])
        .args(["--seconds", "1", "--warmup", "0.2", "--json"]);
    let j = run_json(c);
    let v = &j["volumes"][0];
    assert_eq!(v["luns"], 3, "{j}");
    assert_eq!(v["luns_with_io"], 3, "{j}");
    assert_eq!(v["errors"], 0, "{j}");
    let (lo, hi) = (
        v["lun_ios_min"].as_u64().unwrap(),
        v["lun_ios_max"].as_u64().unwrap(),
    );
    assert!(lo > 0 && lo <= hi && hi < v["ios"].as_u64().unwrap(), "{j}");

    let mut c = load(&d);
    c.args(["--volume", "9", "--seconds", "1", "--warmup", "0"]);
    let out = run_bounded(c, RUN_TIMEOUT);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LUN 9"), "stderr: {stderr}");
    d.assert_alive();
}

#[test]
fn a_polling_client_completes_cleanly_and_refuses_threads() {
    let mut d = Daemon::start();
    let mut c = load(&d);
    c.args(["--volume", &format!("{LUN_NULL},qd=4")]).args([
        "--poll-us",
        "50",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
        "--json",
    ]);
    let j = run_json(c);
    let t = &j["total"];
    assert!(f(t, "ios") > 0.0 && t["errors"] == 0, "{j}");

    let mut c = load(&d);
    c.args([
        "--volume",
        &format!("{LUN_NULL}"),
        "--poll-us",
        "50",
        "--threads",
        "2",
    ]);
    let out = run_bounded(c, RUN_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads 1"));
    d.assert_alive();
}
