//! `cargo xtask ci`: everything CI checks, in the order that fails fastest.

use anyhow::Result;

use crate::util::{cargo, run};

pub fn run_ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Helm charts, alert rules, dashboard and compose file, validated offline.
    crate::deploy_check::run_deploy_check()?;
    // Integration tests need the real services; a missing one fails the run, it never skips.
    if !crate::stack::broker_answers() {
        anyhow::bail!("the local stack is not up (no broker on 127.0.0.1:9092): run `cargo xtask stack up` first");
    }
    run(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    // loom swaps the ring's atomics for its models; a separate target dir keeps the normal build cached.
    run(cargo()
        .args(["test", "-p", "wick-core", "--test", "loom_ring", "--release"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", crate::util::root().join("target/loom")))?;
    eprintln!("ci: all checks passed");
    Ok(())
}
