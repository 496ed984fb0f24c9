//! `cargo xtask bench`: runs the benchmarks and writes `docs/BENCHMARKS.md`, every figure beside
//! the baseline measured in the same run.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::stack;
use crate::util::{cargo, output, root, run};

const RING_IMPLS: [(&str, &str); 6] = [
    ("wick_ring", "Wick ring"),
    ("wick_ring_busy_spin", "Wick ring, busy-spin"),
    ("disruptor_crate", "`disruptor` 4"),
    ("crossbeam_channel", "`crossbeam::channel::bounded`"),
    ("array_queue", "`crossbeam::queue::ArrayQueue`"),
    ("std_sync_channel", "`std::sync::mpsc::sync_channel`"),
];

const SECTIONS: [&str; 8] = ["aggregate", "ring", "broker", "feed", "store", "ingest", "gateway", "system"];

pub fn run_bench(args: &[String]) -> Result<()> {
    // `--report` rewrites the document from the last results without measuring; naming sections
    // measures only those (the document is still written whole, from the latest results of each).
    let (report_only, sections): (bool, Vec<&str>) = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => (false, SECTIONS.to_vec()),
        ["--report"] => (true, Vec::new()),
        ["--report", "system"] => (true, vec!["system"]),
        named if named.iter().all(|n| SECTIONS.contains(n)) => (false, named.to_vec()),
        other => bail!("usage: cargo xtask bench [--report | SECTION...] with sections {SECTIONS:?} (got {other:?})"),
    };
    let root = root();
    let criterion = root.join("target/criterion");
    if !report_only {
        for group in sections.iter().filter(|s| !matches!(**s, "feed" | "gateway" | "system")) {
            let _ = fs::remove_dir_all(criterion.join(group));
        }
        for section in &sections {
            match *section {
                "aggregate" => run(cargo().args(["bench", "-p", "wick-core", "--bench", "aggregate"]))?,
                "ring" => run(cargo().args(["bench", "-p", "wick-core", "--bench", "ring"]))?,
                "broker" => broker_benches()?,
                "store" => run(cargo().args(["bench", "-p", "wick-store", "--bench", "upsert"]))?,
                "ingest" => run(cargo().args(["bench", "-p", "ingest-aggregator", "--bench", "ingest"]))?,
                "gateway" => crate::bench_gateway::measure()?,
                "system" => crate::bench_system::measure()?,
                _ => crate::bench_feed::measure()?,
            }
        }
    }

    // The whole-system run alone updates its own parts of the existing document (its section and
    // its goal rows), so that it can be measured without re-running every other section.
    if sections == ["system"] {
        return crate::bench_system::splice(&root.join("docs/BENCHMARKS.md"));
    }
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench` (criterion medians; every ratio is against a baseline measured in the same run, \
         on the same machine). Regenerate with that command; do not edit by hand.\n"
    )?;
    writeln!(md, "- Machine: {}", machine()?)?;
    writeln!(md, "- Toolchain: {}", output(std::process::Command::new("rustc").arg("-V"))?.trim())?;
    writeln!(md)?;
    goals_section(&mut md, &criterion)?;
    aggregate_section(&mut md, &criterion)?;
    ring_section(&mut md, &criterion)?;
    broker_section(&mut md, &criterion)?;
    crate::bench_feed::section(&mut md)?;
    store_section(&mut md, &criterion)?;
    ingest_section(&mut md)?;
    crate::bench_gateway::section(&mut md)?;
    crate::bench_system::section(&mut md)?;
    let path = root.join("docs/BENCHMARKS.md");
    fs::create_dir_all(root.join("docs"))?;
    fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

fn machine() -> Result<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Ok(format!("{}, {cores} cores available", model.unwrap_or_else(|| "unknown CPU".into())))
}

/// The median of a criterion benchmark, in nanoseconds per iteration.
fn median_ns(criterion: &Path, id: &str) -> Result<f64> {
    let path = criterion.join(id).join("new/estimates.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    json["median"]["point_estimate"].as_f64().with_context(|| format!("no median in {}", path.display()))
}

fn aggregate_section(md: &mut String, criterion: &Path) -> Result<()> {
    const TRADES: f64 = 1_000_000.0;
    let ns = |name: &str| median_ns(criterion, &format!("aggregate/{name}"));
    let (baseline, one, all) = (ns("trade_aggregation_1m")?, ns("wick_1m")?, ns("wick_all_16")?);
    let (scaled, rust_decimal) = (ns("fold_scaled_i128")?, ns("fold_rust_decimal")?);
    let (scan, scan_baseline) = (ns("scan_trades")?, ns("scan_baseline_trades")?);
    let allocs: Value = serde_json::from_str(&fs::read_to_string(root().join("target/wick-bench/allocations.json"))?)?;
    let (allocations, counted) = (allocs["allocations"].as_f64().unwrap_or(f64::NAN), allocs["trades"].as_f64().unwrap_or(f64::NAN));

    writeln!(md, "## Aggregation\n")?;
    writeln!(
        md,
        "Command: `cargo bench -p wick-core --bench aggregate`. The same 1,000,000 trades of one instrument over 12 hours \
         (random walk on a 0.01 tick, sizes with 5 decimals), applied in order; Wick advances its watermark after every trade, \
         as the service does.\n"
    )?;
    writeln!(md, "| case | ms per 1M trades | ns per trade | ratio |")?;
    writeln!(md, "|---|---:|---:|---|")?;
    let row = |md: &mut String, name: &str, t: f64, ratio: &str| writeln!(md, "| {name} | {:.1} | {:.1} | {ratio} |", t / 1e6, t / TRADES);
    row(md, "`trade_aggregation` 13, 1m candles (f64; OHLC, volume, count, buy volume, VWAP)", baseline, "baseline")?;
    row(
        md,
        "Wick, 1m candles (exact decimals, every field)",
        one,
        &format!("**{:.2}x** the speed of `trade_aggregation`", baseline / one),
    )?;
    row(md, "Wick, all 16 intervals at once", all, &format!("**{:.2}x** the cost of one interval", all / one))?;
    row(md, "floor: read every `trade_aggregation` trade once (24 B each)", scan_baseline, "")?;
    row(md, "floor: read every Wick trade once (72 B each)", scan, &format!("{:.0}% of Wick's 1m time", 100.0 * scan / one))?;
    writeln!(md)?;
    writeln!(
        md,
        "Heap allocations on the hot path (all 16 intervals, after 10% of the trades warmed up): **{allocations} over {counted} trades = {:.4} per trade**.\n",
        allocations / counted
    )?;
    writeln!(md, "### Exact decimal representation\n")?;
    writeln!(md, "The inner fold of a candle (high, low, volume, quote volume) over the same 1M prices and sizes, both exact:\n")?;
    writeln!(md, "| representation | ms per 1M trades | ratio |")?;
    writeln!(md, "|---|---:|---|")?;
    writeln!(md, "| `rust_decimal` 1 (96-bit) | {:.2} | baseline |", rust_decimal / 1e6)?;
    writeln!(
        md,
        "| Wick `Decimal` (scaled `i128`) | {:.2} | **{:.2}x** the speed of `rust_decimal` |",
        scaled / 1e6,
        rust_decimal / scaled
    )?;
    writeln!(md)?;
    Ok(())
}

fn ring_section(md: &mut String, criterion: &Path) -> Result<()> {
    writeln!(md, "## Ring\n")?;
    writeln!(
        md,
        "Command: `cargo bench -p wick-core --bench ring`. One producer, 1 or 4 consumers, 1024 slots. Each iteration \
         publishes a burst and waits until every consumer has handled its shard (`value % consumers`): Disruptor designs \
         broadcast and each consumer skips other shards, queue designs get one queue per shard. Wick's ring uses its default \
         yielding wait strategy, the `disruptor` crate its spin-loop-hint busy spin. Figures are nanoseconds per event \
         (burst time / burst size); the ratio is the baseline's time over Wick's (above 1 = Wick is faster).\n"
    )?;
    write!(md, "| consumers | burst |")?;
    for (_, label) in RING_IMPLS {
        write!(md, " {label} ns/event |")?;
    }
    writeln!(md, " Wick busy-spin vs Wick | Wick vs `disruptor` | vs channel | vs ArrayQueue | vs sync_channel |")?;
    writeln!(md, "|---:|---:|{}", "---:|".repeat(RING_IMPLS.len() + 5))?;
    for consumers in [1, 4] {
        for burst in [1u32, 10, 100] {
            let per_event: Vec<f64> = RING_IMPLS
                .iter()
                .map(|(id, _)| median_ns(criterion, &format!("ring/{id}/c{consumers}_b{burst}")).map(|t| t / f64::from(burst)))
                .collect::<Result<_>>()?;
            write!(md, "| {consumers} | {burst} |")?;
            for t in &per_event {
                write!(md, " {t:.1} |")?;
            }
            // The busy-spin variant is compared with the default; the baselines with the default too.
            write!(md, " {:.2}x |", per_event[0] / per_event[1])?;
            for t in &per_event[2..] {
                write!(md, " {:.2}x |", t / per_event[0])?;
            }
            writeln!(md)?;
        }
    }
    writeln!(md)?;
    Ok(())
}

/// Runs the broker benchmarks with the loopback route's `quickack` off, then on (all of them), and
/// leaves the route as it found it. Needs the stack's broker, and root to change the route.
fn broker_benches() -> Result<()> {
    if !stack::broker_answers() {
        bail!("the broker benchmarks need the stack: run `cargo xtask stack up` first");
    }
    let was_on = stack::quickack_enabled();
    let bench = |state: &str, full: bool| {
        run(cargo()
            .args(["bench", "-p", "wick-kafka", "--bench", "broker"])
            .env("WICK_BENCH_QUICKACK", state)
            .env("WICK_BENCH_BROKER_FULL", if full { "1" } else { "0" }))
    };
    let switched = stack::quickack(false).is_ok();
    let result = if switched { bench("off", false) } else { Ok(()) };
    let restored = stack::quickack(true);
    result?;
    restored?;
    bench("on", true)?;
    if !was_on {
        stack::quickack(false)?;
    }
    Ok(())
}

fn broker_section(md: &mut String, criterion: &Path) -> Result<()> {
    let ns = |name: &str, state: &str| median_ns(criterion, &format!("broker/{name}/quickack_{state}"));
    writeln!(md, "## Broker (tansu 0.6.0, SQLite engine, through rskafka 0.6.0)\n")?;
    writeln!(
        md,
        "Command: `cargo bench -p wick-kafka --bench broker`, run by `cargo xtask bench` with the loopback route's `quickack` \
         flag off and then on (the stack sets it; see README). Everything else Wick does is bounded by these figures.\n"
    )?;
    writeln!(md, "| request | quickack off | quickack on | off / on |")?;
    writeln!(md, "|---|---:|---:|---:|")?;
    for (name, label) in [
        ("produce_1x100B", "produce 1 record of 100 B"),
        ("produce_100x100B", "produce 100 records of 100 B (one request)"),
        ("fetch_5000x100B", "fetch 5000 records of 100 B (1 MiB fetches)"),
    ] {
        let on = ns(name, "on")?;
        match ns(name, "off") {
            Ok(off) => writeln!(md, "| {label} | {:.2} ms | {:.2} ms | {:.1}x |", off / 1e6, on / 1e6, off / on)?,
            Err(_) => writeln!(md, "| {label} | not measured (needs root) | {:.2} ms | |", on / 1e6)?,
        }
    }
    writeln!(md)?;
    writeln!(md, "Throughput with `quickack` on:\n")?;
    writeln!(md, "| workload | time per iteration | records/s |")?;
    writeln!(md, "|---|---:|---:|")?;
    for (name, label, records) in [
        ("produce_1x100B", "produce, 1 record of 100 B per request", 1.0),
        ("produce_100x100B", "produce, 100 records of 100 B per request, 1 partition", 100.0),
        ("produce_100x100B_8_partitions_in_flight", "produce, 100 records of 100 B per request, 8 partitions in flight", 800.0),
        ("produce_100x4KB", "produce, 100 records of 4 KB per request", 100.0),
        ("fetch_5000x100B", "fetch 5000 records of 100 B", 5000.0),
        ("fetch_5000x4KB", "fetch 5000 records of 4 KB", 5000.0),
    ] {
        let t = ns(name, "on")?;
        writeln!(md, "| {label} | {:.2} ms | {:.0} |", t / 1e6, records / (t / 1e9))?;
    }
    writeln!(md)?;
    Ok(())
}

/// Candle upserts per second: (label, criterion id, candles per iteration).
const UPSERT_WRITERS: [(&str, &str, f64); 3] = [
    ("Wick: binary `COPY` into staging + one version-guarded `INSERT ... SELECT ... ON CONFLICT`", "upsert/wick_copy/10000", 10_000.0),
    (
        "multi-row `INSERT ... VALUES ... ON CONFLICT`, 1000 rows per statement, one transaction per batch",
        "upsert/multi_row_insert/10000",
        10_000.0,
    ),
    ("one `INSERT ... ON CONFLICT` per candle, autocommit", "upsert/row_per_statement/500", 500.0),
];

fn upserts_per_second(criterion: &Path, id: &str, candles: f64) -> Result<f64> {
    Ok(candles / (median_ns(criterion, id)? / 1e9))
}

fn store_section(md: &mut String, criterion: &Path) -> Result<()> {
    writeln!(md, "## Candle store (PostgreSQL)\n")?;
    writeln!(
        md,
        "Command: `cargo bench -p wick-store --bench upsert`, against the stack's PostgreSQL (plain partitioned table; \
         TimescaleDB is not packaged here). Each writer has a schema of its own made by the same migrations and gets the same \
         batches: half of each batch updates the previous batch's candles with a newer version, half are new candles, all \
         with the version guard (`WHERE candles.version < EXCLUDED.version`).\n"
    )?;
    writeln!(md, "| writer | candles per batch | candle upserts/s | Wick vs this |")?;
    writeln!(md, "|---|---:|---:|---:|")?;
    let wick = upserts_per_second(criterion, UPSERT_WRITERS[0].1, UPSERT_WRITERS[0].2)?;
    for (label, id, candles) in UPSERT_WRITERS {
        let rate = upserts_per_second(criterion, id, candles)?;
        writeln!(md, "| {label} | {candles:.0} | {rate:.0} | {:.1}x |", wick / rate)?;
    }
    writeln!(md)?;
    Ok(())
}

fn ingest_results() -> Result<Value> {
    let path = root().join("target/wick-bench/ingest.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {} (run `cargo xtask bench ingest`)", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn ingest_section(md: &mut String) -> Result<()> {
    let r = ingest_results()?;
    let f = |path: &[&str]| path.iter().fold(&r, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
    writeln!(md, "## ingest-aggregator, end to end\n")?;
    writeln!(
        md,
        "Command: `cargo bench -p ingest-aggregator --bench ingest`, against a private tansu broker (SQLite engine, fresh data directory) on this machine. {} trades of {} \
         instruments ({} per record, {} records) are loaded into a {}-partition `market-events` topic first; then, in the same \
         process, (1) a bare rskafka loop fetches every partition to its end and decodes every `TradeBatch` (one task per partition), \
         and (2) the aggregator runs from a clean checkpoint table until every partition's checkpoint reaches the end of the input, \
         which it stores only after the broker acknowledged all candle output derived from it (all 16 intervals; {} shards, `{}` \
         wait strategy). CPU is the process's user + system time (`/proc/self/stat`), the broker's not included.\n",
        f(&["trades"]),
        f(&["instruments"]),
        f(&["trades"]) / f(&["records"]),
        f(&["records"]),
        f(&["partitions"]),
        f(&["wick", "shards"]),
        r["wick"]["wait_strategy"].as_str().unwrap_or("?"),
    )?;
    writeln!(md, "| run | seconds | trades/s | CPU µs per trade | vs bare loop |")?;
    writeln!(md, "|---|---:|---:|---:|---:|")?;
    writeln!(
        md,
        "| bare rskafka fetch + decode | {:.2} | {:.0} | {:.2} | baseline |",
        f(&["bare", "seconds"]),
        f(&["bare", "trades_per_second"]),
        f(&["bare", "cpu_us_per_trade"])
    )?;
    writeln!(
        md,
        "| Wick: fetch, decode, ring, 16 intervals, produce, acknowledge, checkpoint | {:.2} | {:.0} | {:.2} | {:.2}x |",
        f(&["wick", "seconds"]),
        f(&["wick", "trades_per_second"]),
        f(&["wick", "cpu_us_per_trade"]),
        f(&["wick", "trades_per_second"]) / f(&["bare", "trades_per_second"])
    )?;
    writeln!(md)?;
    Ok(())
}

/// The goals of the issue that introduced each benchmark, met or not, with what limits a miss.
fn goals_section(md: &mut String, criterion: &Path) -> Result<()> {
    let agg = |name: &str| median_ns(criterion, &format!("aggregate/{name}"));
    let ring = |name: &str, c: u32, b: u32| median_ns(criterion, &format!("ring/{name}/c{c}_b{b}"));
    let allocs: Value = serde_json::from_str(&fs::read_to_string(root().join("target/wick-bench/allocations.json"))?)?;
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    writeln!(md, "## Goals\n")?;
    writeln!(md, "| goal | measured | verdict |")?;
    writeln!(md, "|---|---|---|")?;
    for c in [1, 4] {
        for b in [1, 10, 100] {
            // The best of Wick's wait strategies for the deployment at hand: busy-spin when a core per
            // thread is available, yielding otherwise (both are measured and shown below).
            let wick = ring("wick_ring", c, b)?.min(ring("wick_ring_busy_spin", c, b)?);
            let (disruptor, channel) = (ring("disruptor_crate", c, b)?, ring("crossbeam_channel", c, b)?);
            writeln!(
                md,
                "| ring (best wait strategy) >= `disruptor` crate, {c} consumer(s), burst {b} | {:.2}x | {} |",
                disruptor / wick,
                verdict(disruptor >= wick)
            )?;
            let need = if b == 1 { 2.0 } else { 4.0 };
            writeln!(
                md,
                "| ring (best wait strategy) >= {need}x crossbeam channel, {c} consumer(s), burst {b} | {:.2}x | {} |",
                channel / wick,
                verdict(channel / wick >= need)
            )?;
        }
    }
    let (baseline, one, all) = (agg("trade_aggregation_1m")?, agg("wick_1m")?, agg("wick_all_16")?);
    writeln!(md, "| aggregator >= 2x `trade_aggregation` | {:.2}x | {} |", baseline / one, verdict(baseline / one >= 2.0))?;
    let per_trade = allocs["allocations"].as_f64().unwrap_or(f64::NAN) / allocs["trades"].as_f64().unwrap_or(f64::NAN);
    writeln!(md, "| zero heap allocations per trade once warm | {per_trade} | {} |", verdict(per_trade == 0.0))?;
    writeln!(md, "| all 16 intervals <= 3x one | {:.2}x | {} |", all / one, verdict(all / one <= 3.0))?;
    let rate = |i: usize| upserts_per_second(criterion, UPSERT_WRITERS[i].1, UPSERT_WRITERS[i].2);
    let (wick, multi, single) = (rate(0)?, rate(1)?, rate(2)?);
    writeln!(md, "| candle upserts >= 5x multi-row `INSERT` | {:.1}x | {} |", wick / multi, verdict(wick / multi >= 5.0))?;
    writeln!(md, "| candle upserts >= 100x one row per statement | {:.0}x | {} |", wick / single, verdict(wick / single >= 100.0))?;
    let ingest = ingest_results()?;
    let (rate, bare) =
        (ingest["wick"]["trades_per_second"].as_f64().unwrap_or(0.0), ingest["bare"]["trades_per_second"].as_f64().unwrap_or(1.0));
    writeln!(md, "| ingest-aggregator >= 300k trades/s to acknowledged output | {rate:.0} | {} |", verdict(rate >= 300_000.0))?;
    writeln!(md, "| ingest-aggregator >= 0.8x a bare fetch-and-decode loop | {:.2}x | {} |", rate / bare, verdict(rate / bare >= 0.8))?;
    crate::bench_gateway::goals(md)?;
    crate::bench_system::goals(md)?;
    writeln!(md)?;
    writeln!(md, "What limits the misses (read with the tables below):\n")?;
    writeln!(
        md,
        "- **Ring against the `disruptor` crate, 1 consumer, burst 100 (burst 10 in some runs).** Wick is 5-15% slower per event (a \
         few nanoseconds per burst). The wait strategy is not the cause (Wick's busy-spin variant measures the same as its \
         yielding default); the difference is in the per-event publish and handle loops and is not diagnosed yet.\n\
         - **Ring, burst 1.** One event per round trip measures the hand-off itself: the producer's cursor and the consumer's \
         progress each cross between the two vCPUs, plus a thread wake-up. Wick and the `disruptor` crate cost the same there; a \
         bounded channel costs well under 2x that, so 2x is out of reach on this machine. From bursts of 10 on, batching \
         (one cursor read and one progress write per batch) is what separates the designs.\n\
         - **Ring, 4 consumers.** This machine has 2 cores: with a producer and 4 consumers, threads must be scheduled in turn. \
         A broadcast ring needs every consumer to run for every burst (each must pass every slot), while per-shard queues wake \
         only the consumers that have work, which favours the queues at small bursts. The `disruptor` crate offers only \
         busy-spinning (or sleeping) waits and collapses here (milliseconds per event); Wick's ring yields after a short spin.\n\
         - **Aggregator vs `trade_aggregation`.** The baseline adds `f64`s into a candle of seven fields; Wick does exact 128-bit \
         decimal arithmetic with scale checks and overflow detection for every field of its candle (quote volume, taker-buy \
         volumes, first and last trade), keeps trades of 72 bytes (id, side, event and receive time) rather than 24, and advances \
         a watermark after every trade. Reading the trades alone (the floor rows below) is a small part of the time; the \
         remainder is the exact arithmetic. Exactness is a requirement; this is its measured price.\n\
         - **Candle upserts against a multi-row `INSERT`.** Both writers end in the same server-side work per candle: a primary-key \
         probe and, for half of them, a new row version (MVCC), in the same partitioned table. Binary `COPY` into staging removes \
         only what is per statement (parsing and planning a 19,000-parameter `VALUES` list); the per-row work they share bounds \
         the ratio. Going further would mean doing less per row on the server (an append-only table read by newest version), which the schema's \
         primary key on (instrument, interval, open time) rules out. In the service, the writer also collapses the many versions \
         a candle gets within a batch window into one row, which this benchmark (distinct candles only) does not count.\n\
         - **Candle upserts against one row per statement.** That writer's cost per candle is one round trip and one commit, \
         and a commit waits for `fdatasync` of the WAL (`synchronous_commit = on`, the default). Its rate therefore follows the \
         disk's flush latency more than anything Wick does: on this machine's disk a flush takes about a tenth of a millisecond \
         when the disk is idle (the table above), and 3.2 ms was measured in an earlier run while a compiler was writing to the same disk (142x then); so the 100x goal holds only on a busy or slow disk.\n\
         - **ingest-aggregator against the bare loop.** Both are bound by this machine's 2 cores, shared with the broker. The \
         aggregator decodes the same records, and in addition moves every trade through the ring into its shard, keeps 16 \
         intervals and duplicate ranges, and encodes and produces the candle events (one final per 1s bucket and instrument here, \
         about one event per 20 trades), which the broker must also store: about twice the bare loop's CPU per trade (table \
         above), so about half its rate when the CPU is the limit.\n\
         - **Gateway p99 at 10k requests/s.** The gateway's own handling of the query (routing, two L1 chunk lookups, \
         concatenating the candles' pre-rendered JSON) stays at or under 100 µs at p99 by its histogram (query-gateway section \
         below). What the client adds is the answer itself: 500 candles with every model field are about 200 KB of JSON, so \
         10k answers a second are 2 GB/s through loopback TCP into a load generator that shares the 2 cores. A smaller answer \
         (fewer candles, or fewer fields, which the design does not allow) or a load generator on another machine would be \
         needed to measure the service alone.\n"
    )?;
    Ok(())
}
