//! The floor under QD 1 latency over loopback TCP on this machine: a bare exchange shaped like
//! a 4 KiB read (a 48-byte command out; a 48-byte header and 4 KiB of data back, one write
//! each) between two threads on different CPUs, with no iSCSI, no runtime and no backend.
//!
//! Measured two ways: both ends polling their sockets (non-blocking reads in a loop, as vvold's
//! network threads and `vvold-load --poll-us` do after traffic), and both blocking in `read`
//! (as a target that sleeps between commands does). A target's mean latency at QD 1 cannot go
//! below the first; the second is where a sleeping target with a sleeping client starts. Issue
//! 6's "0.6× tgt's latency at QD 1" is only reachable where the first is well below 0.6× the
//! second. `scripts/bench.sh` prints these lines in its header.
//!
//! Not criterion: each figure is one thread's view of many exchanges with another thread, and
//! the spread between trials (printed) matters as much as the median on a shared VM.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

#[path = "common/cpus.rs"]
mod cpus;
use cpus::{allowed_cpus, median, pin};

const EXCHANGES: u32 = 20_000;
const TRIALS: usize = 5;
const COMMAND: usize = 48;
const ANSWER: usize = 48 + 4096;

#[derive(Clone, Copy, PartialEq)]
enum Wait {
    Poll,
    Sleep,
}

/// Move `len` bytes in as many calls of `step` (given how many have moved) as it takes,
/// retrying at once while the socket would block: that is the polling.
fn whole(len: usize, mut step: impl FnMut(usize) -> io::Result<usize>) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        match step(done) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    whole(len, |at| s.read(&mut buf[at..]))
}

fn write_full(s: &mut TcpStream, buf: &[u8]) -> io::Result<()> {
    whole(buf.len(), |at| s.write(&buf[at..]))
}

fn prepare(s: &TcpStream, wait: Wait) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_nonblocking(wait == Wait::Poll)
}

/// Wall time per exchange seen by the initiator's thread, in µs.
fn trial(wait: Wait, initiator_cpu: usize, target_cpu: usize) -> io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let target = std::thread::spawn(move || -> io::Result<()> {
        pin(target_cpu)?;
        let (mut s, _) = listener.accept()?;
        prepare(&s, wait)?;
        let mut command = [0u8; COMMAND];
        let answer = vec![0u8; ANSWER];
        // One exchange more than timed: the first only starts the clock.
        for _ in 0..=EXCHANGES {
            read_full(&mut s, &mut command)?;
            write_full(&mut s, &answer)?;
        }
        Ok(())
    });
    pin(initiator_cpu)?;
    let mut s = TcpStream::connect(addr)?;
    prepare(&s, wait)?;
    let command = [1u8; COMMAND];
    let mut answer = vec![0u8; ANSWER];
    write_full(&mut s, &command)?;
    read_full(&mut s, &mut answer)?;
    let start = Instant::now();
    for _ in 0..EXCHANGES {
        write_full(&mut s, &command)?;
        read_full(&mut s, &mut answer)?;
    }
    let per_exchange = start.elapsed().as_secs_f64() * 1e6 / f64::from(EXCHANGES);
    target.join().expect("target thread")?;
    Ok(per_exchange)
}

fn report(label: &str, wait: Wait, initiator_cpu: usize, target_cpu: usize) -> io::Result<()> {
    let mut trials = Vec::new();
    for _ in 0..TRIALS {
        trials.push(trial(wait, initiator_cpu, target_cpu)?);
    }
    let (lo, hi) = trials
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    println!(
        "loopback QD 1 floor, {label}: {:.1} µs per 4 KiB exchange (median of {TRIALS} × \
         {EXCHANGES}, trials {lo:.1}–{hi:.1})",
        median(trials)
    );
    Ok(())
}

fn main() -> io::Result<()> {
    if !cpus::selected("loopback") {
        return Ok(());
    }
    let cpus = allowed_cpus();
    let (Some(&first), Some(&second)) = (cpus.first(), cpus.get(1)) else {
        println!(
            "loopback QD 1 floor: needs two CPUs (two polling threads on one would take turns)"
        );
        return Ok(());
    };
    report("both ends polling", Wait::Poll, first, second)?;
    report("both ends sleeping", Wait::Sleep, first, second)?;
    Ok(())
}
