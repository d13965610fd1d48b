//! Replays simulator schedules from the command line.
//!
//! ```text
//! cargo test --release --test sim_replay -- --seed 42 [--verbose]
//! cargo test --release --test sim_replay -- --seeds 0..10000 [--tight] [--restarts]
//! cargo test --release --test sim_replay -- --seed 42 --shrink
//! SIM_SEED=42 cargo test --test sim_replay
//! ```
//!
//! `--seed N` runs schedule number N (the same on every machine) and prints
//! its outcome; `--verbose` prints the whole trace (every operation, frame,
//! event and task execution). `--seeds A..B` sweeps a range and lists the
//! failing seeds. `--shrink` reduces a failing seed's schedule to a small one
//! and prints it. `--tight` uses the tight capacities (outbox 4, 2 tasks) of
//! the second property test, `--smallest` the smallest device that compiles
//! (outbox 3, 1 task); `--ops N` the longest schedule (default 64).
//! `--restarts` draws schedules with server restarts among the operations
//! (`Op::RestartServer`, about one in twelve; the property test
//! `tests/breaker12_sim_restart.rs` draws them so): other schedules than
//! the same seeds without it.
//! Without arguments, a short sweep runs as a smoke test. Unknown arguments
//! are ignored (test runners pass their own), so `--seed=42` runs that sweep.
//! `SIM_REPORT_BASE=N` in the environment makes the server's store number
//! every device's reports from `N` on (the devices from 0): the wrapping
//! window of PROTOCOL.md 9.1, e.g. at 2^31 + 1 = 2147483649.

mod sim;

use std::process::ExitCode;
use std::time::Instant;

use sim::schedule::{schedule_from_seed, shrink_seed};

struct Args {
    seeds: core::ops::Range<u64>,
    verbose: bool,
    shrink: bool,
    tight: bool,
    smallest: bool,
    restarts: bool,
    ops: usize,
    list: bool,
    ignored: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..32,
        verbose: false,
        shrink: false,
        tight: false,
        smallest: false,
        restarts: false,
        ops: 64,
        list: false,
        ignored: false,
    };
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let n: u64 = seed.parse().map_err(|_| format!("bad SIM_SEED {seed}"))?;
        args.seeds = n..n + 1;
    }
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seed" => {
                let n: u64 = value()?.parse().map_err(|e| format!("--seed: {e}"))?;
                args.seeds = n..n + 1;
            }
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").ok_or("--seeds wants A..B")?;
                let a: u64 = a.parse().map_err(|e| format!("--seeds: {e}"))?;
                let b: u64 = b.parse().map_err(|e| format!("--seeds: {e}"))?;
                args.seeds = a..b;
            }
            "--ops" => args.ops = value()?.parse().map_err(|e| format!("--ops: {e}"))?,
            "--verbose" | "-v" => args.verbose = true,
            "--shrink" => args.shrink = true,
            "--tight" => args.tight = true,
            "--smallest" => args.smallest = true,
            "--restarts" => args.restarts = true,
            // Test runners list tests first (nextest: `--list --format terse`).
            "--list" => args.list = true,
            "--ignored" => args.ignored = true,
            // Other flags and test-name filters that test runners pass to
            // every test binary mean nothing here.
            _ => {}
        }
    }
    Ok(args)
}

fn run(
    s: &sim::Schedule,
    args: &Args,
    trace: bool,
    verbose: bool,
) -> Result<sim::Summary, sim::Failure> {
    if args.smallest {
        sim::run::<3, 1>(s, trace, verbose)
    } else if args.tight {
        sim::run::<4, 2>(s, trace, verbose)
    } else {
        sim::run::<16, 4>(s, trace, verbose)
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim_replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.list {
        if !args.ignored {
            println!("sim_replay: test");
        }
        return ExitCode::SUCCESS;
    }
    let single = args.seeds.end - args.seeds.start == 1;
    let start = Instant::now();
    let mut failed = Vec::new();
    let mut total = sim::Summary::default();
    for seed in args.seeds.clone() {
        let s = schedule_from_seed(seed, args.ops, args.restarts);
        if single {
            println!("seed {seed}: {s:?}");
        }
        match run(&s, &args, single, args.verbose) {
            Ok(summary) => {
                if single {
                    println!("seed {seed}: ok {summary:?}");
                }
                total.add(&summary);
            }
            Err(f) => {
                println!("seed {seed}: FAILED: {}", f.message);
                if single && !args.verbose {
                    println!("{f}");
                }
                failed.push(seed);
            }
        }
    }
    if args.shrink {
        for &seed in &failed {
            let small = shrink_seed(seed, args.ops, args.restarts, |s| {
                run(s, &args, false, false).is_err()
            });
            println!("seed {seed} shrinks to:\n{small:?}");
            if let Err(f) = run(&small, &args, true, false) {
                println!("{f}");
            }
        }
    }
    let n = args.seeds.end - args.seeds.start;
    println!("totals over passing schedules: {total:?}");
    println!(
        "{n} schedule(s), {} failed, {:.1} s{}",
        failed.len(),
        start.elapsed().as_secs_f64(),
        match failed.len() {
            0 => String::new(),
            1..=20 => format!(": seeds {failed:?}"),
            _ => format!(": seeds {:?} ...", &failed[..20]),
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
