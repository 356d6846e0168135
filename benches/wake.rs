//! What one sleep and wake-up costs on this machine: the floor under a target's CPU per I/O
//! whenever it sleeps between commands (queue depth 1, or clients slower than the target).
//!
//! Two threads bounce one byte over a Unix socket pair, each blocking in `read` until the other
//! writes, as a target and its initiator do at QD 1. Each side's CPU time comes from
//! `CLOCK_THREAD_CPUTIME_ID` (the scheduler's own clock, not tick samples). Run once with the
//! threads on different CPUs, where every wake-up reaches an idle CPU, and once on the same CPU,
//! where it is a plain task switch. On a VM the first includes the hypervisor's halt and wake of
//! the idle vCPU, unless the guest polls before halting (`haltpoll.guest_halt_poll_ns`, printed
//! with the results). `scripts/bench.sh` prints these lines in its header.
//!
//! Not criterion: criterion measures the caller's wall time per iteration, and the figure
//! wanted here is each thread's CPU time.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

#[path = "common/cpus.rs"]
mod cpus;
use cpus::{allowed_cpus, median, pin};

const ROUND_TRIPS: u32 = 20_000;
const TRIALS: usize = 5;

fn thread_cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

/// One side's CPU time per round trip, and the wall time per round trip seen by the caller.
struct Trial {
    caller_cpu_us: f64,
    echo_cpu_us: f64,
    wall_us: f64,
}

fn trial(caller_cpu: usize, echo_cpu: usize) -> std::io::Result<Trial> {
    let (mut near, mut far) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<f64> {
        pin(echo_cpu)?;
        let mut b = [0u8; 1];
        far.read_exact(&mut b)?; // the first byte only starts the clock
        far.write_all(&b)?;
        let start = thread_cpu_us();
        for _ in 0..ROUND_TRIPS {
            far.read_exact(&mut b)?;
            far.write_all(&b)?;
        }
        Ok((thread_cpu_us() - start) / f64::from(ROUND_TRIPS))
    });
    pin(caller_cpu)?;
    let mut b = [1u8; 1];
    near.write_all(&b)?;
    near.read_exact(&mut b)?;
    let (wall, cpu) = (Instant::now(), thread_cpu_us());
    for _ in 0..ROUND_TRIPS {
        near.write_all(&b)?;
        near.read_exact(&mut b)?;
    }
    let caller_cpu_us = (thread_cpu_us() - cpu) / f64::from(ROUND_TRIPS);
    let wall_us = wall.elapsed().as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS);
    let echo_cpu_us = echo.join().expect("echo thread")?;
    Ok(Trial {
        caller_cpu_us,
        echo_cpu_us,
        wall_us,
    })
}

fn report(label: &str, caller_cpu: usize, echo_cpu: usize) -> std::io::Result<()> {
    let mut trials = Vec::new();
    for _ in 0..TRIALS {
        trials.push(trial(caller_cpu, echo_cpu)?);
    }
    let cpu = median(
        trials
            .iter()
            .map(|t| (t.caller_cpu_us + t.echo_cpu_us) / 2.0)
            .collect(),
    );
    let wall = median(trials.iter().map(|t| t.wall_us).collect());
    println!(
        "wake-up {label}: {cpu:.1} µs CPU per side per round trip, {wall:.1} µs per round trip \
         (median of {TRIALS} × {ROUND_TRIPS})"
    );
    Ok(())
}

fn main() -> std::io::Result<()> {
    if !cpus::selected("wake") {
        return Ok(());
    }
    let cpus = allowed_cpus();
    let Some(&first) = cpus.first() else {
        println!("wake-up: cannot read this process's CPUs");
        return Ok(());
    };
    if let Some(&second) = cpus.get(1) {
        report("across CPUs", first, second)?;
    }
    report("on one CPU", first, first)?;
    match std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        Ok(ns) => println!("guest halt-polling: {} ns", ns.trim()),
        Err(_) => println!("guest halt-polling: not present"),
    }
    Ok(())
}
