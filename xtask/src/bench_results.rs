//! Where every benchmark figure comes from: runs, the stored results of each section
//! (`docs/bench/<section>.json`), and goal verdicts that account for run-to-run noise.
//!
//! A run is one `cargo xtask bench ...` invocation, named by its UTC start and the commit it
//! measured. Each section measured in it is stored as a [`Record`]: the run, and one [`Sample`] of
//! results per repeat (a section that compares Wick with a baseline and is cheap enough is measured
//! three times in its run). The document is written from the stored records alone, so sections
//! measured in different runs sit side by side and each says which run it comes from.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::util::{output, root};

/// One `cargo xtask bench` invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `<UTC start>@<commit>`, e.g. `2026-12-03T16:55:02Z@4f8de67`.
    pub id: String,
    pub started: String,
    pub commit: String,
    /// Tracked files differed from the commit when the run started (a shared checkout often does).
    pub uncommitted_changes: bool,
    pub command: String,
    pub machine: String,
    pub cores: usize,
    pub toolchain: String,
    /// `/proc/loadavg` (1, 5 and 15 minutes) at the start; unknown for runs from before runs were recorded.
    pub load_average: Option<[f64; 3]>,
    /// Cores kept busy by everything on the machine over the 2 s before the start.
    pub busy_cores: Option<f64>,
}

/// One repeat of a section's measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// `/proc/loadavg` when this repeat started.
    pub load_average: Option<[f64; 3]>,
    /// Cores kept busy by everything on the machine over the 2 s before this repeat started.
    #[serde(default)]
    pub busy_cores: Option<f64>,
    pub results: Value,
}

/// A section's results, with the run that measured them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub section: String,
    pub run: Run,
    /// When this section's measurement started (UTC), within its run.
    pub started: String,
    /// One per repeat in the run.
    pub samples: Vec<Sample>,
    /// Text carried over verbatim from the document as it stood before results were stored (its
    /// figures are not regenerated); `samples` is empty then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_over: Option<CarriedOver>,
}

/// A section of an older document, kept as it was until the section is measured again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CarriedOver {
    /// The section's body (without its `## ` heading).
    pub markdown: String,
    /// Its rows of the goals table, `| goal | measured | verdict |` each.
    pub goal_rows: Vec<String>,
    /// Its items under "What limits the misses".
    pub misses: Vec<String>,
}

impl Record {
    /// The repeats' results, in order.
    pub fn results(&self) -> impl Iterator<Item = &Value> {
        self.samples.iter().map(|s| &s.results)
    }

    /// The figure at `path` of every repeat (NaN where it is missing).
    pub fn each(&self, path: &[&str]) -> Vec<f64> {
        self.results().map(|r| num(at(r, path))).collect()
    }

    /// The median over the repeats of the figure at `path`.
    pub fn median(&self, path: &[&str]) -> f64 {
        median(&self.each(path))
    }
}

/// `v[path[0]][path[1]]...`, where a number indexes an array.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| match (v, k.parse::<usize>()) {
        (Value::Array(items), Ok(i)) => items.get(i).unwrap_or(&Value::Null),
        _ => &v[*k],
    })
}

pub fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The directory of stored results.
pub fn results_dir() -> PathBuf {
    root().join("docs/bench")
}

pub fn save(record: &Record) -> Result<()> {
    let dir = results_dir();
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", record.section));
    fs::write(&path, serde_json::to_string_pretty(record)? + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Every stored record in `dir`, by file name order.
pub fn load_all(dir: &Path) -> Result<Vec<Record>> {
    let mut paths: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    paths.sort();
    let mut records = Vec::new();
    for path in paths {
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let record: Record = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(record.section.as_str()) {
            bail!("{} holds the results of section {:?}", path.display(), record.section);
        }
        records.push(record);
    }
    Ok(records)
}

/// The current UTC time, `2026-12-03T16:55:02Z`.
pub fn utc_now() -> Result<String> {
    Ok(output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?.trim().to_owned())
}

pub fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// (busy, total) jiffies of the whole machine.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = cpu.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Cores kept busy by everything on the machine over `span`.
pub fn busy_cores(span: Duration) -> Option<f64> {
    let (b0, t0) = machine_ticks()?;
    std::thread::sleep(span);
    let (b1, t1) = machine_ticks()?;
    Some((b1 - b0) as f64 / (t1 - t0).max(1) as f64 * cores() as f64)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
    format!("{}, {} cores available", model.unwrap_or_else(|| "unknown CPU".into()), cores())
}

/// The run starting now, for `command`.
pub fn start_run(command: &str) -> Result<Run> {
    let started = utc_now()?;
    let commit = output(Command::new("git").current_dir(root()).args(["rev-parse", "--short", "HEAD"]))?.trim().to_owned();
    let changes = output(Command::new("git").current_dir(root()).args(["status", "--porcelain", "--untracked-files=no"]))?;
    Ok(Run {
        id: format!("{started}@{commit}"),
        started,
        commit,
        uncommitted_changes: !changes.trim().is_empty(),
        command: command.to_owned(),
        machine: machine(),
        cores: cores(),
        toolchain: output(Command::new("rustc").arg("-V"))?.trim().to_owned(),
        load_average: load_average(),
        busy_cores: busy_cores(Duration::from_secs(2)),
    })
}

/// What a goal asks of its figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aim {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
}

impl Aim {
    fn threshold(self) -> f64 {
        match self {
            Aim::AtLeast(t) | Aim::AtMost(t) | Aim::Below(t) => t,
        }
    }

    fn meets(self, v: f64) -> bool {
        match self {
            Aim::AtLeast(t) => v >= t,
            Aim::AtMost(t) => v <= t,
            Aim::Below(t) => v < t,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Met,
    Missed,
    /// Measured more than once in its run, and the goal's threshold lies within the spread.
    WithinNoise,
    /// The comparison is not counted either way, for the reason given.
    NotCounted(String),
    NotMeasured(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Met => f.write_str("met"),
            Verdict::Missed => f.write_str("**missed**"),
            Verdict::WithinNoise => f.write_str("within noise"),
            Verdict::NotCounted(why) => write!(f, "not counted: {why}"),
            Verdict::NotMeasured(why) => write!(f, "not measured: {why}"),
        }
    }
}

/// The verdict on a goal from its figure in each repeat of one run: within noise when the repeats
/// differ and the threshold lies between the lowest and the highest (both included), else met when
/// every repeat meets it. A missing figure (NaN) is a miss.
pub fn judge(values: &[f64], aim: Aim) -> Verdict {
    if values.is_empty() {
        return Verdict::NotMeasured("no figure".into());
    }
    if values.iter().any(|v| v.is_nan()) {
        return Verdict::Missed;
    }
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let t = aim.threshold();
    if lo < hi && lo <= t && t <= hi {
        Verdict::WithinNoise
    } else if values.iter().all(|v| aim.meets(*v)) {
        Verdict::Met
    } else {
        Verdict::Missed
    }
}

/// A figure over the repeats of a run: the median, and the range when there are several:
/// `1.07x (3 repeats: 0.98x to 1.12x)`.
pub fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    if values.len() < 2 {
        return values.first().map_or_else(|| "no figure".into(), |v| fmt(*v));
    }
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    format!("{} ({} repeats: {} to {})", fmt(median(values)), values.len(), fmt(lo), fmt(hi))
}

struct GoalRow {
    goal: String,
    measured: String,
    verdict: String,
    run: String,
    repeats: usize,
}

/// The document being written: each section's body, and what sections add to the shared parts
/// (the runs, the goals table and what limits the misses).
#[derive(Default)]
pub struct Doc {
    pub body: String,
    goals: Vec<GoalRow>,
    misses: Vec<(String, String)>,
    runs: Vec<(Run, Vec<String>)>,
}

impl Doc {
    /// Opens a section: its heading, and which run its figures come from.
    pub fn open(&mut self, heading: &str, record: &Record) -> Result<()> {
        match self.runs.iter_mut().find(|(r, _)| r.id == record.run.id) {
            Some((_, sections)) => sections.push(heading.to_owned()),
            None => self.runs.push((record.run.clone(), vec![heading.to_owned()])),
        }
        writeln!(self.body, "## {heading}\n")?;
        if record.carried_over.is_some() {
            writeln!(
                self.body,
                "Run: {}. Carried over unchanged from the document of commit {} (measured before runs and their results were \
                 recorded; the figures below are not regenerated, and the section is replaced when it is measured again).\n",
                record.run.id, record.run.commit
            )?;
            return Ok(());
        }
        let loads: Vec<String> = record
            .samples
            .iter()
            .map(|s| {
                format!(
                    "{} / {}",
                    s.load_average.map_or_else(|| "unknown".into(), |l| format!("{:.2}", l[0])),
                    s.busy_cores.map_or_else(|| "unknown".into(), |b| format!("{b:.2}"))
                )
            })
            .collect();
        let repeats = match record.samples.len() {
            1 => "measured once in that run".to_owned(),
            n => format!("measured {n} times in that run; tables show the median of the repeats, the goals their spread"),
        };
        writeln!(
            self.body,
            "Run: {} (section started {}; {repeats}; 1-minute load average / cores busy over the 2 s before each repeat: {}).\n",
            record.run.id,
            record.started,
            loads.join(", ")
        )?;
        Ok(())
    }

    /// A row of the goals table.
    pub fn goal(&mut self, record: &Record, goal: impl Into<String>, measured: impl Into<String>, verdict: &Verdict) {
        self.goals.push(GoalRow {
            goal: goal.into(),
            measured: measured.into(),
            verdict: verdict.to_string(),
            run: record.run.id.clone(),
            repeats: record.samples.len(),
        });
    }

    /// An item under "What limits the misses", from `record`'s figures.
    pub fn miss(&mut self, record: &Record, text: impl Into<String>) {
        self.misses.push((record.run.id.clone(), text.into()));
    }

    /// A row of the goals table from a markdown row `| goal | measured | verdict |` (for sections
    /// that write their rows as text, and for carried-over ones).
    pub fn goal_row(&mut self, record: &Record, row: &str) -> Result<()> {
        let cells: Vec<&str> = row.trim().trim_matches('|').split(" | ").map(str::trim).collect();
        let [goal, measured, verdict] = cells.as_slice() else { bail!("{}: a goal row needs 3 cells: {row}", record.section) };
        self.goals.push(GoalRow {
            goal: (*goal).to_owned(),
            measured: (*measured).to_owned(),
            verdict: (*verdict).to_owned(),
            run: record.run.id.clone(),
            repeats: record.samples.len().max(1),
        });
        Ok(())
    }

    /// Adds a carried-over section's goal rows and miss items as they were.
    pub fn carry_over(&mut self, record: &Record) -> Result<()> {
        let Some(c) = &record.carried_over else { return Ok(()) };
        for row in &c.goal_rows {
            self.goal_row(record, row)?;
        }
        for m in &c.misses {
            self.misses.push((record.run.id.clone(), m.clone()));
        }
        writeln!(self.body, "{}\n", c.markdown.trim_end())?;
        Ok(())
    }

    /// The whole document: header, runs, goals, what limits the misses, then the sections.
    pub fn finish(self) -> Result<String> {
        let mut md = String::new();
        writeln!(md, "# Benchmarks\n")?;
        writeln!(
            md,
            "Written by `cargo xtask bench` from the results stored in `docs/bench/` (one file per section, each with the run \
             that measured it); `cargo xtask bench --report` writes it again from them without measuring, and CI checks that \
             this file is exactly that, so do not edit it by hand.\n"
        )?;
        writeln!(
            md,
            "Sections come from different runs; each section names its run, and so does each goal. Within a section, every \
             ratio is against a baseline measured in the same run, on the same machine. A run is one `cargo xtask bench` \
             command, named by its start (UTC) and the commit it measured; the load average and busy cores at its start say \
             how much else the machine was doing (it is shared with other work, and figures measured under load are reported \
             as such).\n"
        )?;
        writeln!(md, "## Runs\n")?;
        writeln!(
            md,
            "| run | sections | command | commit | machine | toolchain | load average at start (1, 5, 15 min) | busy cores at start |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---:|")?;
        for (run, sections) in &self.runs {
            writeln!(
                md,
                "| {} | {} | {} | {}{} | {} | {} | {} | {} |",
                run.id,
                sections.join(", "),
                if run.command.starts_with("cargo ") { format!("`{}`", run.command) } else { run.command.clone() },
                run.commit,
                if run.uncommitted_changes { " (with uncommitted changes in the checkout)" } else { "" },
                run.machine,
                run.toolchain,
                run.load_average.map_or_else(|| "not recorded".into(), |l| format!("{:.2}, {:.2}, {:.2}", l[0], l[1], l[2])),
                run.busy_cores.map_or_else(|| "not recorded".into(), |b| format!("{b:.2}")),
            )?;
        }
        writeln!(md)?;
        writeln!(md, "## Goals\n")?;
        writeln!(
            md,
            "Verdicts: **met** when every repeat of the run meets the goal; **missed** when one does not; **within noise** when \
             the section was measured several times in its run and the goal's threshold lies between the lowest and the highest \
             repeat (the measured column shows the median and that spread); **not counted** when the comparison says nothing \
             (a baseline that collapsed on this machine, see the ring section). The run column says how many repeats a \
             goal's figure had.\n"
        )?;
        writeln!(md, "| goal | measured | verdict | run |")?;
        writeln!(md, "|---|---|---|---|")?;
        for g in &self.goals {
            let repeats = if g.repeats > 1 { format!(" ({} repeats)", g.repeats) } else { String::new() };
            writeln!(md, "| {} | {} | {} | {}{repeats} |", g.goal, g.measured, g.verdict, g.run)?;
        }
        writeln!(md)?;
        if !self.misses.is_empty() {
            writeln!(md, "What limits the misses (each from the figures of the run named, read with the tables below):\n")?;
            for (run, text) in &self.misses {
                writeln!(md, "- {text} (Run {run}.)")?;
            }
            writeln!(md)?;
        }
        md.push_str(&self.body);
        Ok(md.trim_end().to_owned() + "\n")
    }
}

/// Records for the document generator's tests.
#[cfg(test)]
pub mod fixtures {
    use super::{Record, Run, Sample};
    use serde_json::Value;

    pub fn run(id: &str) -> Run {
        Run {
            id: id.to_owned(),
            started: "2026-12-03T16:55:02Z".into(),
            commit: "abc1234".into(),
            uncommitted_changes: false,
            command: "cargo xtask bench".into(),
            machine: "Test CPU, 2 cores available".into(),
            cores: 2,
            toolchain: "rustc 1.95.0".into(),
            load_average: Some([1.0, 1.0, 1.0]),
            busy_cores: Some(0.5),
        }
    }

    /// A record of `section` measured once per sample in run `2026-12-03T16:55:02Z@abc1234`.
    pub fn record(section: &str, samples: Vec<Value>) -> Record {
        Record {
            section: section.into(),
            run: run("2026-12-03T16:55:02Z@abc1234"),
            started: "2026-12-03T16:56:00Z".into(),
            samples: samples
                .into_iter()
                .map(|results| Sample { load_average: Some([1.5, 1.0, 1.0]), busy_cores: Some(0.25), results })
                .collect(),
            carried_over: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_inside_the_spread_of_the_repeats_is_within_noise() {
        assert_eq!(judge(&[0.95, 1.02, 1.10], Aim::AtLeast(1.0)), Verdict::WithinNoise);
        assert_eq!(judge(&[1.0, 1.02, 1.10], Aim::AtLeast(1.0)), Verdict::WithinNoise);
        assert_eq!(judge(&[1.01, 1.02, 1.10], Aim::AtLeast(1.0)), Verdict::Met);
        assert_eq!(judge(&[0.80, 0.90, 0.99], Aim::AtLeast(1.0)), Verdict::Missed);
        assert_eq!(judge(&[900.0, 1100.0], Aim::Below(1000.0)), Verdict::WithinNoise);
        assert_eq!(judge(&[1100.0, 1200.0], Aim::Below(1000.0)), Verdict::Missed);
        assert_eq!(judge(&[2.9, 3.5], Aim::AtMost(3.0)), Verdict::WithinNoise);
    }

    #[test]
    fn one_repeat_or_identical_repeats_are_met_or_missed() {
        assert_eq!(judge(&[0.99], Aim::AtLeast(1.0)), Verdict::Missed);
        assert_eq!(judge(&[1.0], Aim::AtLeast(1.0)), Verdict::Met);
        // Zero allocations in every repeat meets "at most 0", it is not noise.
        assert_eq!(judge(&[0.0, 0.0, 0.0], Aim::AtMost(0.0)), Verdict::Met);
        assert_eq!(judge(&[1000.0, 1000.0], Aim::Below(1000.0)), Verdict::Missed);
        assert_eq!(judge(&[1.2, f64::NAN, 1.3], Aim::AtLeast(1.0)), Verdict::Missed);
        assert!(matches!(judge(&[], Aim::AtLeast(1.0)), Verdict::NotMeasured(_)));
    }

    #[test]
    fn the_spread_shows_the_median_and_the_range() {
        assert_eq!(spread(&[1.1, 0.9, 1.0], |v| format!("{v:.1}x")), "1.0x (3 repeats: 0.9x to 1.1x)");
        assert_eq!(spread(&[1.25], |v| format!("{v:.2}x")), "1.25x");
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_record_file_must_hold_its_own_section() {
        let dir = std::env::temp_dir().join(format!("wick-bench-results-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let record = fixtures::record("ring", vec![serde_json::json!({"x": 1})]);
        fs::write(dir.join("gateway.json"), serde_json::to_string(&record).unwrap()).unwrap();
        let err = load_all(&dir).unwrap_err().to_string();
        assert!(err.contains("gateway.json holds the results of section \"ring\""), "{err}");
        fs::rename(dir.join("gateway.json"), dir.join("ring.json")).unwrap();
        let loaded = load_all(&dir).unwrap();
        assert_eq!((loaded.len(), loaded[0].median(&["x"])), (1, 1.0));
        fs::remove_dir_all(&dir).unwrap();
    }
}
