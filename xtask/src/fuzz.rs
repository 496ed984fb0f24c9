//! `cargo xtask fuzz [--seconds N] [TARGET...]`: every cargo-fuzz target of `fuzz/` (the parsers
//! of outside input) built once and run for a bounded time each, with libFuzzer's memory limits;
//! any crash, panic, leak, timeout or oversized allocation fails the run. Installs what it needs
//! (the nightly toolchain, cargo-fuzz) when it is missing.
//!
//! The committed corpus (`fuzz/corpus/<target>/`) is only read: what a run discovers goes to
//! `fuzz/target/corpus/<target>/`, which the next local run starts from too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{output, root, run};

/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 20;
/// libFuzzer's limits: the process's resident memory, and any single allocation. The inputs are a
/// few KiB, so an allocation of hundreds of MiB means a length taken on trust.
const RSS_LIMIT_MB: u32 = 2048;
const MALLOC_LIMIT_MB: u32 = 256;
/// One input taking longer than this is a hang.
const UNIT_TIMEOUT_SECONDS: u32 = 10;

/// One target's run.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    runs: u64,
    runs_per_second: u64,
    corpus_units: u64,
    corpus_bytes: String,
    peak_rss_mb: u64,
    /// `None` when the run passed; else what libFuzzer reported, and the input it saved.
    failure: Option<String>,
}

pub fn run_fuzz(args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut only = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--seconds" => seconds = rest.next().context("--seconds needs a number")?.parse().context("--seconds must be a number")?,
            name if !name.starts_with('-') => only.push(name.to_owned()),
            other => bail!("unknown option {other:?}: usage: cargo xtask fuzz [--seconds N] [TARGET...]"),
        }
    }
    let fuzz_dir = root().join("fuzz");
    let mut targets = targets(&fuzz_dir)?;
    if !only.is_empty() {
        if let Some(unknown) = only.iter().find(|n| !targets.contains(n)) {
            bail!("no fuzz target {unknown:?}: the targets are {}", targets.join(", "));
        }
        targets.retain(|t| only.contains(t));
    }

    let started = Instant::now();
    install_tools()?;
    run(nightly_cargo().args(["fuzz", "build"]).current_dir(root()))?;
    let built = started.elapsed();
    let binaries = fuzz_dir.join("target").join(host_triple()?).join("release");

    let mut outcomes = Vec::new();
    for target in &targets {
        eprintln!("fuzz: {target} for {seconds} s");
        let outcome = fuzz_target(&fuzz_dir, &binaries, target, seconds)?;
        if let Some(failure) = &outcome.failure {
            eprintln!("fuzz: {target} FAILED: {failure}");
        }
        outcomes.push((target.clone(), outcome));
    }

    println!("\n{:<22} {:>10} {:>8} {:>16} {:>9}  result", "target", "runs", "runs/s", "corpus", "peak RSS");
    for (target, o) in &outcomes {
        let corpus = format!("{} ({})", o.corpus_units, o.corpus_bytes);
        let result = o.failure.as_deref().unwrap_or("ok");
        println!("{target:<22} {:>10} {:>8} {corpus:>16} {:>6} MB  {result}", o.runs, o.runs_per_second, o.peak_rss_mb);
    }
    println!(
        "\nfuzz: {} targets, {seconds} s each; build {:.0} s, total {:.0} s",
        outcomes.len(),
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = outcomes.iter().filter(|(_, o)| o.failure.is_some()).map(|(t, _)| t.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found failures in {} (inputs under fuzz/artifacts/; reproduce with `cargo +nightly fuzz run TARGET INPUT`)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs`, by name.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            names.extend(path.file_stem().map(|s| s.to_string_lossy().into_owned()));
        }
    }
    names.sort();
    Ok(names)
}

/// `cargo +nightly`, through rustup's proxy (not `$CARGO`, which is the toolchain running xtask),
/// without the settings of the cargo that runs xtask: fuzz targets build into `fuzz/target`.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

/// The nightly toolchain (cargo-fuzz's sanitizer flags need it) and cargo-fuzz, installed when
/// missing.
fn install_tools() -> Result<()> {
    let quiet = |cmd: &mut Command| cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if !quiet(nightly_cargo().args(["fuzz", "--version"])) {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

fn host_triple() -> Result<String> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    version.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_owned).context("rustc -vV names no host")
}

/// Runs one target's binary for `seconds`, from the committed corpus and the local one, and reads
/// libFuzzer's final statistics. Its output goes to `fuzz/target/logs/<target>.log`.
fn fuzz_target(fuzz_dir: &Path, binaries: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = fuzz_dir.join("target/corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let logs = fuzz_dir.join("target/logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let binary: PathBuf = binaries.join(target);
    let status = Command::new(&binary)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-timeout={UNIT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // New inputs go to the first directory; the committed seeds are only read.
        .arg(&corpus)
        .arg(fuzz_dir.join("corpus").join(target))
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting {} (was it built?)", binary.display()))?;
    let text = std::fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let mut outcome = parse_log(&text);
    if !status.success() && outcome.failure.is_none() {
        outcome.failure = Some(format!("exited with {status}"));
    }
    if let Some(failure) = &mut outcome.failure {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("--- {} (last lines) ---", log_path.display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        failure.push_str(&format!("; log {}", log_path.display()));
    }
    Ok(outcome)
}

/// What a libFuzzer log says: its `stat::` lines, the corpus of its last status line, and the
/// first sign of a failure with the input it wrote.
fn parse_log(text: &str) -> Outcome {
    let stat = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("stat::{name}:"))).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let mut outcome = Outcome {
        runs: stat("number_of_executed_units"),
        runs_per_second: stat("average_exec_per_sec"),
        peak_rss_mb: stat("peak_rss_mb"),
        ..Outcome::default()
    };
    // `#1234  DONE   cov: 812 ft: 2901 corp: 311/41Kb lim: 4096 exec/s: 617 rss: 60Mb`
    if let Some(corp) = text.lines().rev().filter(|l| l.starts_with('#')).find_map(|l| l.split("corp: ").nth(1)) {
        let corp = corp.split_whitespace().next().unwrap_or_default();
        if let Some((units, bytes)) = corp.split_once('/') {
            outcome.corpus_units = units.parse().unwrap_or(0);
            outcome.corpus_bytes = bytes.to_owned();
        }
    }
    let kinds = [
        ("panicked at", "panic"),
        ("ERROR: libFuzzer: out-of-memory (malloc", "allocation over the malloc limit"),
        ("ERROR: libFuzzer: out-of-memory", "RSS over the limit"),
        ("ERROR: libFuzzer: timeout", "timeout"),
        ("ERROR: LeakSanitizer", "leak"),
        ("ERROR: AddressSanitizer", "memory error"),
        ("ERROR: libFuzzer: deadly signal", "crash"),
    ];
    let kind = kinds.iter().find(|(marker, _)| text.contains(marker)).map(|(_, kind)| *kind);
    let input = text.lines().find_map(|l| l.split("Test unit written to ").nth(1)).map(str::trim);
    outcome.failure = match (kind, input) {
        (Some(kind), Some(input)) => Some(format!("{kind}: {input}")),
        (Some(kind), None) => Some(kind.to_owned()),
        (None, Some(input)) => Some(format!("failed: {input}")),
        (None, None) => None,
    };
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_passing_run() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 7/1024b exec/s: 0 rss: 40Mb\n\
                   #25000\tDONE   cov: 812 ft: 2901 corp: 311/41Kb lim: 4096 exec/s: 1250 rss: 61Mb\n\
                   Done 25000 runs in 20 second(s)\nstat::number_of_executed_units: 25000\n\
                   stat::average_exec_per_sec:     1250\nstat::new_units_added:          304\nstat::peak_rss_mb:              61\n";
        assert_eq!(
            parse_log(log),
            Outcome { runs: 25000, runs_per_second: 1250, corpus_units: 311, corpus_bytes: "41Kb".into(), peak_rss_mb: 61, failure: None }
        );
    }

    #[test]
    fn reads_a_failure_and_its_input() {
        let panic = "thread '<unnamed>' panicked at src/lib.rs:3:5:\nattempt to multiply with overflow\n\
                     ==1== ERROR: libFuzzer: deadly signal\nTest unit written to fuzz/artifacts/t/crash-abc\n";
        assert_eq!(parse_log(panic).failure.as_deref(), Some("panic: fuzz/artifacts/t/crash-abc"));
        let oom = "==1== ERROR: libFuzzer: out-of-memory (malloc(4294967296))\nTest unit written to fuzz/artifacts/t/oom-1\n";
        assert_eq!(parse_log(oom).failure.as_deref(), Some("allocation over the malloc limit: fuzz/artifacts/t/oom-1"));
        assert_eq!(parse_log("#1 DONE corp: 1/1b\n").failure, None);
    }
}
