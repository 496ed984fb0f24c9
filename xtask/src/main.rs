//! Repository chores, run as `cargo xtask <command>`: `demo` (the main job), `ci` (what `.ci/run`
//! runs), `stack`, `migrate`, `faults` and `bench` (writes `docs/BENCHMARKS.md`).

mod bench;
mod bench_backfill;
mod bench_engines;
mod bench_feed;
mod bench_gateway;
mod bench_results;
mod bench_ring;
mod bench_system;
mod ci;
mod demo;
mod deploy_check;
mod faults;
mod fuzz;
mod stack;
mod util;

use anyhow::{bail, Result};

const HELP: &str = "\
cargo xtask <command>

Commands:
  demo    [INSTRUMENTS [RATE]] [--check]: the whole pipeline on the local stack with the live chart, from a day of
          simulated history (Ctrl-C stops it); --check: sees a trade become a candle over REST and a WebSocket push, then stops
  ci      fmt check, clippy (warnings denied), every test with cargo-nextest, the loom model tests
  stack   up|down|status: the local broker, PostgreSQL, Redis and Redis cluster on loopback
  migrate apply the candle schema (migrations/) to WICK_DATABASE_URL or the stack's database wick
  bench   [--report | aggregate ring broker broker-engines feed backfill store ingest gateway system naive]: run the benchmarks (each section's
          results stored in docs/bench/ with its run), write docs/BENCHMARKS.md from the stored results
  faults  [ROUNDS [TRADES]]: the fault-injection drills, larger than in CI, with their summary table
  deploy-check  validate deploy/ offline: Helm charts, Kubernetes schemas, alert rules, dashboard, compose, metric names
  fuzz    [--seconds N] [TARGET...]: every cargo-fuzz target (fuzz/) built once and run N s each (default 20), memory-limited
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci::run_ci(),
        Some("stack") => stack::run_stack(&args[1..]),
        Some("migrate") => stack::migrate(),
        Some("bench") => bench::run_bench(&args[1..]),
        Some("demo") => demo::run_demo(&args[1..]),
        Some("faults") => faults::run_faults(&args[1..]),
        Some("deploy-check") => deploy_check::run_deploy_check(),
        Some("fuzz") => fuzz::run_fuzz(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}
