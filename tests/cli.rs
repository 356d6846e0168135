//! The `vvold` command line: configuration errors, busy ports, --listen and readiness logging.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn vvold(config: &std::path::Path, listen: &str, data: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vvold"));
    c.arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data);
    c
}

/// Run vvold on `text` as its configuration file, in `dir`, until it exits.
fn run_with_config(dir: &std::path::Path, text: &str) -> std::process::Output {
    let cfg = dir.join("vvold.toml");
    std::fs::write(&cfg, text).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    run_bounded(vvold(&cfg, &listen, &dir.join("data")), EXIT_TIMEOUT)
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_config(
        dir.path(),
        &format!(
            "[[target]]\nname = \"{T_MAIN}\"\n[[target.lun]]\nid = 0\nbackend = \"ram\"\n\
             size = \"1MiB\"\nblock_size = 1024\n"
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("target[0].lun[0].block_size"),
        "stderr: {stderr}"
    );
    // A syntax error too.
    let out = run_with_config(dir.path(), "listen = [\n");
    assert_eq!(out.status.code(), Some(2));
    // A missing file.
    let listen = format!("127.0.0.1:{}", free_port());
    let out = run_bounded(
        vvold(
            &dir.path().join("nonesuch.toml"),
            &listen,
            &dir.path().join("data"),
        ),
        EXIT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonesuch.toml"));
}

#[test]
fn port_in_use_fails_naming_the_address() {
    let d = Daemon::start();
    // The running daemon holds its port; a second one cannot listen there.
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        vvold(
            d.config_path(),
            &d.addr.to_string(),
            &dir.path().join("data"),
        ),
        EXIT_TIMEOUT,
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "second daemon exited 0: {all}");
    assert!(all.contains(&d.addr.to_string()), "output: {all}");
}

#[test]
fn unknown_congestion_control_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_config(
        dir.path(),
        &format!(
            "[iscsi]\ntcp_congestion_control = \"no-such-cc\"\n[[target]]\nname = \"{T_MAIN}\"\n\
             [[target.lun]]\nid = 0\nbackend = \"null\"\nsize = \"1MiB\"\n"
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("iscsi.tcp_congestion_control") && stderr.contains("no-such-cc"),
        "stderr: {stderr}"
    );
    // The message lists what the kernel has instead.
    assert!(stderr.contains("reno"), "stderr: {stderr}");
}

#[test]
fn listen_flag_is_used_and_logged() {
    let d = Daemon::start();
    wait_for_log(&d, &format!("listening on {}", d.addr));
    // The configured portal (127.0.0.1:1) was replaced, not added.
    assert!(!d.log_text().contains("listening on 127.0.0.1:1\n"));
    std::net::TcpStream::connect(d.addr).expect("connect to the --listen portal");
}
