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
    // A loom run that ran no model (a cfg that compiled them all away, a renamed test) passes
    // silently: count them.
    eprintln!("$ cargo test -p wick-core --test loom_ring --release (RUSTFLAGS=--cfg loom)");
    let out = cargo()
        .args(["test", "-p", "wick-core", "--test", "loom_ring", "--release"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", crate::util::root().join("target/loom"))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let loom = String::from_utf8_lossy(&out.stdout);
    print!("{loom}");
    if !out.status.success() {
        anyhow::bail!("the loom model tests failed with {}", out.status);
    }
    let passed = loom_tests_passed(&loom);
    if passed == 0 {
        anyhow::bail!("the loom model tests ran no test");
    }
    eprintln!("ci: {passed} loom model tests passed");
    eprintln!("ci: all checks passed");
    Ok(())
}

/// The number of tests libtest reports as passed, over every `test result:` line of its output.
fn loom_tests_passed(out: &str) -> usize {
    out.lines().filter_map(|l| l.strip_prefix("test result: ok. ")).filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::loom_tests_passed;

    #[test]
    fn counts_the_tests_a_libtest_run_passed() {
        let out = "running 3 tests\ntest a ... ok\n\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s\n";
        assert_eq!(loom_tests_passed(out), 3);
        assert_eq!(loom_tests_passed("running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored\n"), 0);
        assert_eq!(loom_tests_passed(""), 0);
    }
}
