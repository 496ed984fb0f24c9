//! `cargo xtask faults [ROUNDS [TRADES]]`: the fault-injection drills of `tests/faults.rs`, larger
//! than in CI (default 10 faults per kill drill, 20,000 trades per instrument), on release
//! binaries, with the summary table printed. The stack must be up (`cargo xtask stack up`).

use anyhow::{bail, Context, Result};

use crate::util::{cargo, run};

pub fn run_faults(args: &[String]) -> Result<()> {
    let rounds: usize = args.first().map(|a| a.parse()).transpose().context("ROUNDS must be a number")?.unwrap_or(10);
    let trades: usize = args.get(1).map(|a| a.parse()).transpose().context("TRADES must be a number")?.unwrap_or(20_000);
    if args.len() > 2 {
        bail!("usage: cargo xtask faults [ROUNDS [TRADES]]");
    }
    if !crate::stack::broker_answers() {
        bail!("the local stack is not up (no broker on 127.0.0.1:9092): run `cargo xtask stack up` first");
    }
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "wick-e2e", "--test", "faults", "--", "--nocapture"])
        .env("WICK_FAULTS_ROUNDS", rounds.to_string())
        .env("WICK_FAULTS_TRADES", trades.to_string())
        // A longer feed, so that ten faults spread over it.
        .env("WICK_FAULTS_PACE", std::env::var("WICK_FAULTS_PACE").unwrap_or_else(|_| "30".into()));
    run(&mut cmd)
}
