//! Data survives a clean shutdown, and a crash once it was synchronised or written with FUA.

mod common;

use common::*;

const BLOCKS_512: u32 = 2048; // 1 MiB
const BLOCKS_4K: u32 = 256; // 1 MiB

async fn write_both(d: &Daemon, seed: u32, fua: bool) -> (Vec<u8>, Vec<u8>) {
    let mut s = login_main(d).await;
    let a = pattern(BLOCKS_512 as usize * 512, seed);
    let b = pattern(BLOCKS_4K as usize * 4096, seed + 1);
    if fua {
        for (l, data, block) in [(LUN_FILE, &a, 512usize), (LUN_FILE_4K, &b, 4096)] {
            let blocks = (data.len() / block) as u16;
            let r = cmd(&mut s, l, &write10_fua(7, blocks), Some(data), 0).await;
            assert_good(&r);
        }
    } else {
        write_blocks(&mut s, LUN_FILE, 7, 512, &a).await;
        write_blocks(&mut s, LUN_FILE_4K, 7, 4096, &b).await;
    }
    (a, b)
}

async fn read_both(d: &Daemon, a: &[u8], b: &[u8]) {
    let mut s = login_main(d).await;
    assert!(read_blocks(&mut s, LUN_FILE, 7, 512, BLOCKS_512).await == a);
    assert!(read_blocks(&mut s, LUN_FILE_4K, 7, 4096, BLOCKS_4K).await == b);
}

#[tokio::test]
async fn survives_sigterm_restart() {
    let mut d = Daemon::start();
    let (a, b) = write_both(&d, 1, false).await;
    let status = d.stop().expect("was running");
    assert!(status.success(), "SIGTERM exit: {status}");
    d.start_again();
    read_both(&d, &a, &b).await;
}

#[tokio::test]
async fn survives_sigkill_after_synchronize_cache() {
    let mut d = Daemon::start();
    let (a, b) = write_both(&d, 10, false).await;
    let mut s = login_main(&d).await;
    for l in [LUN_FILE, LUN_FILE_4K] {
        assert_good(&cmd(&mut s, l, &synchronize_cache10(), None, 0).await);
    }
    d.crash();
    d.start_again();
    read_both(&d, &a, &b).await;
}

#[tokio::test]
async fn fua_write_survives_sigkill() {
    let mut d = Daemon::start();
    let (a, b) = write_both(&d, 20, true).await;
    d.crash();
    d.start_again();
    read_both(&d, &a, &b).await;
}
