use super::*;
use crate::vvol::qos::stats::QosStatus;

fn qos() -> Qos {
    Qos::new(QosSettings {
        enabled: true,
        max_lag: Duration::from_millis(500),
    })
}

fn limits(upper: Option<u32>, lower: Option<u32>) -> IoLimits {
    IoLimits {
        upper,
        lower,
        weight: None,
    }
}

fn read(len: u32) -> Charge {
    charge(&Plan::Read { offset: 0, len }, 32 * 1024).unwrap()
}

#[test]
fn charges_follow_the_plan() {
    assert_eq!(read(4096).units, 1);
    assert_eq!(read(256 * 1024).units, 8);
    let w = charge(
        &Plan::Write {
            offset: 0,
            len: 65 * 1024,
            fua: false,
        },
        32 * 1024,
    )
    .unwrap();
    assert_eq!((w.units, w.write, w.bytes), (3, true, 65 * 1024));
    let ws = charge(
        &Plan::WriteSame {
            offset: 0,
            len: 1 << 30,
            block_len: 512,
            unmap: false,
        },
        32 * 1024,
    )
    .unwrap();
    assert_eq!(ws.units, 1024, "offloads cost one unit per MiB");
    let unmap = charge(
        &Plan::Unmap {
            ranges: vec![(0, 4096), (1 << 20, 4096)],
        },
        32 * 1024,
    );
    assert_eq!(unmap.unwrap().units, 1);
    assert!(charge(
        &Plan::Respond(crate::scsi::Response::good_empty()),
        32 * 1024
    )
    .is_none());
}

#[test]
fn disabled_qos_has_no_volumes() {
    let q = Qos::new(QosSettings {
        enabled: false,
        max_lag: Duration::from_millis(500),
    });
    let p = q.pool("luns", 8, 32 * 1024, || None);
    assert!(q
        .volume("lun:t/0".into(), None, &p, IoLimits::default())
        .is_none());
    assert!(!q.report().enabled);
}

#[tokio::test]
async fn a_full_window_queues_and_a_completion_hands_the_slot_on() {
    let q = qos();
    let p = q.pool("c", 1, 32 * 1024, || None);
    let a = q.volume("a".into(), None, &p, IoLimits::default()).unwrap();
    let b = q
        .volume("b".into(), None, &p, limits(None, Some(100)))
        .unwrap();
    let first = a.admit(read(4096)).await;
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            let adm = b.admit(read(4096)).await;
            b.finish(adm);
        })
    };
    tokio::task::yield_now().await;
    assert_eq!(q.report().pools[0].queued, 1);
    assert!(!waiting.is_finished());
    a.finish(first);
    waiting.await.unwrap();
    let r = q.report();
    assert_eq!((r.pools[0].queued, r.pools[0].inflight), (0, 0));
    assert_eq!(r.pools[0].reservations, 100);
    assert_eq!(r.volumes.iter().map(|v| v.reads + v.writes).sum::<u64>(), 2);
}

#[tokio::test]
async fn cap_is_shared_and_changes_live() {
    let q = qos();
    let p = q.pool("c", 64, 32 * 1024, || None);
    let v = q
        .volume("v".into(), None, &p, limits(Some(1000), None))
        .unwrap();
    // Ten back-to-back I/Os at 1000 IOPS: the burst (5 ms) lets six go at once, the rest wait.
    let t = Instant::now();
    for _ in 0..10 {
        let a = v.admit(read(4096)).await;
        v.finish(a);
    }
    assert!(t.elapsed() >= Duration::from_millis(3), "{:?}", t.elapsed());
    v.set_limits(limits(None, None));
    assert_eq!(v.limits().upper, None);
    let t = Instant::now();
    for _ in 0..1000 {
        let a = v.admit(read(4096)).await;
        v.finish(a);
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    q.tick();
    q.tick();
    let r = v.report();
    assert_eq!(r.reads, 1010);
    assert!(r.capped >= 1);
    assert!(r.throttled_seconds > 0.0);
    assert_eq!(r.status, QosStatus::Ok);
}

#[test]
fn prometheus_text_names_every_volume() {
    let q = qos();
    let p = q.pool("lab", 32, 32 * 1024, || None);
    let _v = q
        .volume("vvol:\"x\"".into(), None, &p, limits(Some(500), Some(50)))
        .unwrap();
    q.tick();
    let text = prometheus(&q.report());
    assert!(text.contains("# TYPE vvold_qos_ios_total counter"));
    assert!(
        text.contains(r#"vvold_qos_limit_iops{volume="vvol:\"x\"",pool="lab",kind="upper"} 500"#),
        "{text}"
    );
    assert!(text.contains(r#"vvold_qos_status{volume="vvol:\"x\"",pool="lab",status="Ok"} 1"#));
    assert!(text.contains(r#"vvold_qos_pool_window{pool="lab"} 32"#));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn a_raised_cap_releases_the_backlog_the_old_one_queued() {
    let q = qos();
    let p = q.pool("c", 64, 32 * 1024, || None);
    let v = q
        .volume("v".into(), None, &p, limits(Some(10), None))
        .unwrap();
    // 30 I/Os at once under 10 IOPS: all but the burst's are held, the last for ~2.8 s.
    let t = Instant::now();
    let held: Vec<_> = (0..30)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move {
                let a = v.admit(read(4096)).await;
                v.finish(a);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(held.iter().filter(|h| !h.is_finished()).count() >= 25);
    v.set_limits(limits(Some(100_000), None));
    for h in held {
        h.await.unwrap();
    }
    // Held to their old release times, the last would have gone after ~2.8 s.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(v.report().reads, 30);
}
