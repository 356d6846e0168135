//! libiscsi's command line tools as independent peers. Skipped (with a notice) when a tool is
//! not installed; scripts/test.sh installs libiscsi-bin so CI runs them.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn tool(name: &str) -> Option<Command> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("NOTICE: {name} not installed (apt-get install libiscsi-bin); test skipped");
        return None;
    }
    Some(Command::new(name))
}

fn run(mut c: Command, args: &[String]) -> String {
    c.args(args);
    let out = run_bounded(c, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn url(d: &Daemon, l: u16) -> String {
    format!("iscsi://{}/{T_MAIN}/{l}", d.addr)
}

#[test]
fn iscsi_inq() {
    let Some(c) = tool("iscsi-inq") else { return };
    let d = Daemon::start();
    let out = run(c, &[url(&d, LUN_FILE)]);
    assert!(
        out.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{out}"
    );
    assert!(out.contains("Vendor:VVOLD"), "{out}");
    assert!(out.contains("Product:VVOLD DISK"), "{out}");
    // VPD 83h (popt takes the page code in decimal).
    let c = tool("iscsi-inq").unwrap();
    let args = ["-e", "1", "-c", "131"].map(String::from);
    let out = run(c, &[&args[..], &[url(&d, LUN_FILE)]].concat());
    assert!(
        out.contains("Page Code:(0x83) DEVICE_IDENTIFICATION"),
        "{out}"
    );
    assert!(out.contains("Designator Type:(3) NAA"), "{out}");
}

#[test]
fn iscsi_readcapacity16() {
    let Some(c) = tool("iscsi-readcapacity16") else {
        return;
    };
    let d = Daemon::start();
    let out = run(c, &[url(&d, LUN_FILE_4K)]);
    let compact: String = out.split_whitespace().collect();
    let last = LUN_BYTES / 4096 - 1;
    assert!(
        compact.contains(&format!("RETURNEDLOGICALBLOCKADDRESS:{last}")),
        "{out}"
    );
    assert!(compact.contains("LOGICALBLOCKLENGTHINBYTES:4096"), "{out}");
    assert!(compact.contains(&format!("Totalsize:{LUN_BYTES}")), "{out}");
}

#[test]
fn iscsi_ls() {
    let Some(c) = tool("iscsi-ls") else { return };
    let d = Daemon::start();
    // -s logs in to every target listed, the CHAP one included: give it the credentials.
    let portal = format!("iscsi://{CHAP_USER}%{CHAP_SECRET}@{}", d.addr);
    let out = run(c, &["-s".into(), portal]);
    let main = format!("Target:{T_MAIN} Portal:{},1", d.addr);
    let chap = format!("Target:{T_CHAP} Portal:{},1", d.addr);
    assert!(out.contains(&main) && out.contains(&chap), "{out}");
    assert!(
        !out.contains(T_ACL),
        "the allow-listed target is hidden: {out}"
    );
    // The LUN lines of the main target follow its Target line.
    let main_part = out.split(&main).nth(1).unwrap();
    let main_part = main_part.split("Target:").next().unwrap();
    let luns = main_part.matches("Type:DIRECT_ACCESS").count();
    assert_eq!(luns, MAIN_LUNS.len(), "{out}");
    for l in MAIN_LUNS {
        assert!(
            main_part.contains(&format!("Lun:{l} ")),
            "LUN {l} missing: {out}"
        );
    }
}

#[test]
fn iscsi_swp() {
    let Some(c) = tool("iscsi-swp") else { return };
    let d = Daemon::start();
    let u = url(&d, LUN_RAM);
    assert!(run(c, std::slice::from_ref(&u)).contains("SWP:0"));
    let out = run(
        tool("iscsi-swp").unwrap(),
        &["-s".into(), "on".into(), u.clone()],
    );
    assert!(out.contains("Turning SWP ON"), "{out}");
    assert!(run(tool("iscsi-swp").unwrap(), std::slice::from_ref(&u)).contains("SWP:1"));
    // Writes are now refused: SOFTWARE WRITE PROTECTED.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = login_main(&d).await;
        let r = cmd(&mut s, LUN_RAM, &write10(0, 1), Some(&[1; 512]), 0).await;
        assert_sense(&r, 0x07, 0x27, 0x02);
    });
    run(
        tool("iscsi-swp").unwrap(),
        &["-s".into(), "off".into(), u.clone()],
    );
    assert!(run(tool("iscsi-swp").unwrap(), &[u]).contains("SWP:0"));
}
