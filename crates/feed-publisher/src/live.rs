//! The `live` command: one WebSocket session per exchange that subscribes to the trades of the
//! given symbols, keeps the connection alive, reconnects with exponential backoff and subscribes
//! again, drops trades it has already published (a reconnect re-sends recent ones), and repairs
//! gaps in the exchange's trade sequence from its REST API ([`crate::history`]).
//!
//! Every exchange numbers trades per instrument in increasing order (Binance `t`/`a`, Coinbase
//! `trade_id`, Kraken v2 `trade_id`), so de-duplication keeps only the highest id published per
//! instrument: memory stays bounded by the number of instruments. Kraken v2 subscribes with its
//! snapshot, so a reconnect re-sends recent trades and the overlap is dropped. Kraken v1 has no
//! trade ids: its trades are numbered per microsecond and not de-duplicated.
//!
//! Gap repair. Missing ids are revealed by a trade whose id is more than one past the ids
//! accounted for (which covers a reconnect: its first trade's id jumps) or by a Coinbase
//! heartbeat whose `last_trade_id` is. The range is fetched over REST and published in id order,
//! one fetch at a time per session (the exchange's rate limit is per client) in a task of its own,
//! so that it goes on while the session reads, reconnects or backs off.
//!
//! Ordering. The aggregator buckets by event time and closes a candle once the watermark (the
//! newest event time minus the allowed lateness) passes it, so the repaired trades, older than the
//! trade that revealed them, should go out first: the session holds that trade until the repair is
//! done, for at most [`RepairSettings::wait`], and only when no other repair is running, so a slow
//! or failing REST API stalls the live stream by one wait at most, never one per gap. A repair
//! that takes longer goes on in the background and its trades are published when they come; the
//! candles that closed meanwhile are revised (within the aggregator's revision window; older
//! trades are its `too_late` dead letters). A live trade whose id falls inside a range being
//! repaired is published at once and skipped by the repair, so no id is published twice.
//!
//! Ids that could not be repaired (the REST API refused or kept failing until the repair's
//! timeout, the exchange's history lacks them, the feed has no REST history, too many repairs
//! queued, the session stopped first) are reported: a log line,
//! `wick_feed_gap_trades_unrepaired_total`, and one dead letter per contiguous range, reason
//! `unrepaired_gap`, whose payload names the exchange, the symbol, the missing ids and the trades
//! around them, so that an operator can backfill them. Feeds whose ids are no sequence (Kraken v1,
//! Coinbase Advanced Trade) cannot tell a gap from a quiet market, except across a reconnect: the
//! span between the last trade before it and the first after it is reported, unless that first
//! trade was seen already (the subscription's snapshot overlapped).

use std::collections::{btree_map, BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use wick_core::{Clock, Instrument, Timestamp, Trade};
use wick_service::shutdown::Shutdown;

use crate::exchange::{self, binance, coinbase, kraken, Exchange, FeedMessage};
use crate::history::{History, HistorySettings, Mark, Rejected};
use crate::metrics::Metrics;
use crate::producer::{DeadLetter, Producer};
use crate::run::Summary;

/// Which of an exchange's public trade feeds a session follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Feed {
    /// Binance `<symbol>@trade`.
    BinanceTrade,
    /// Binance `<symbol>@aggTrade` (one message per taker order).
    BinanceAggTrade,
    /// Coinbase Exchange `matches` with `heartbeat`.
    CoinbaseExchange,
    /// Coinbase Advanced Trade `market_trades`.
    CoinbaseAdvanced,
    /// Kraken WebSocket v2 `trade`.
    KrakenV2,
    /// Kraken WebSocket v1 `trade` (no trade ids: Wick derives them; no gap detection).
    KrakenV1,
}

impl Feed {
    /// The feed named `name` (`trade`, `aggTrade`, `exchange`, `advanced`, `v2`, `v1`) of
    /// `exchange`, or its default.
    pub fn of(exchange: Exchange, name: Option<&str>) -> Result<Feed, String> {
        match (exchange, name) {
            (Exchange::Binance, None | Some("trade")) => Ok(Feed::BinanceTrade),
            (Exchange::Binance, Some("aggTrade")) => Ok(Feed::BinanceAggTrade),
            (Exchange::Coinbase, None | Some("exchange")) => Ok(Feed::CoinbaseExchange),
            (Exchange::Coinbase, Some("advanced")) => Ok(Feed::CoinbaseAdvanced),
            (Exchange::Kraken, None | Some("v2")) => Ok(Feed::KrakenV2),
            (Exchange::Kraken, Some("v1")) => Ok(Feed::KrakenV1),
            (e, Some(other)) => Err(format!("{e} has no feed {other:?}: binance trade|aggTrade, coinbase exchange|advanced, kraken v2|v1")),
        }
    }

    pub fn exchange(self) -> Exchange {
        match self {
            Feed::BinanceTrade | Feed::BinanceAggTrade => Exchange::Binance,
            Feed::CoinbaseExchange | Feed::CoinbaseAdvanced => Exchange::Coinbase,
            Feed::KrakenV2 | Feed::KrakenV1 => Exchange::Kraken,
        }
    }

    /// Whether consecutive trades have consecutive ids, so that a jump is a gap.
    fn sequential_ids(self) -> bool {
        !matches!(self, Feed::KrakenV1 | Feed::CoinbaseAdvanced)
    }
}

/// A live session's settings.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    pub feed: Feed,
    /// The exchange's own symbols: `BTCUSDT`, `BTC-USD`, `BTC/USD`.
    pub symbols: Vec<String>,
    /// The WebSocket URL (default: the exchange's public feed; tests point it at a local server).
    pub url: String,
    /// The first reconnect waits this long, doubling up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A connection silent for this long (no trade, heartbeat or ping) is considered dead.
    pub idle_timeout: Duration,
    /// Gap repair from the exchange's REST API; `None` only counts gaps.
    pub repair: Option<RepairSettings>,
}

impl LiveSettings {
    /// What `live` runs with unless told otherwise: the exchange's public WebSocket feed and REST
    /// API, gap repair on.
    pub fn new(feed: Feed, symbols: Vec<String>) -> LiveSettings {
        LiveSettings {
            url: default_url(feed, &symbols),
            feed,
            symbols,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            repair: Some(RepairSettings::new(feed)),
        }
    }
}

/// How a session repairs gaps.
#[derive(Clone, Debug)]
pub struct RepairSettings {
    /// The exchange's REST API: base URL, rate limit, retries.
    pub history: HistorySettings,
    /// How long the trade that revealed a gap waits for the repair, so that the repaired trades
    /// are published before it, in event-time order. Beyond it the live stream goes on, and the
    /// repaired trades follow when they come, revising candles that closed meanwhile.
    pub wait: Duration,
    /// A repair not done after this long (the history's retries included) is given up and its
    /// ids reported as unrepaired.
    pub timeout: Duration,
}

/// Room for the one or two pages of a reconnect's gap and a quick retry, if a page comes back
/// within a few hundred milliseconds (not measured here: this machine cannot reach the exchanges;
/// `wick_feed_gap_repair_seconds` shows it in production). Longer would hold back every live trade
/// behind it for little gain: the aggregator's allowed lateness is a second, and a live
/// instrument's watermark moves on while it is idle, so a longer wait no longer keeps its smallest
/// candles open anyway.
pub const DEFAULT_REPAIR_WAIT: Duration = Duration::from_secs(2);

/// Long enough for the history's retries of a rate-limited or briefly failing API.
pub const DEFAULT_REPAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// The most ids one repair fetches (about 30 MB of trades held at once; some half an hour of
/// Binance's busiest symbol). A longer gap is reported, for `feed-publisher backfill`.
pub const MAX_REPAIR_IDS: u64 = 200_000;

/// Repairs waiting for the one running; beyond them a gap is reported at once.
const MAX_QUEUED_REPAIRS: usize = 64;

impl RepairSettings {
    /// The defaults for the history of `feed` from its exchange's public REST API.
    pub fn new(feed: Feed) -> RepairSettings {
        RepairSettings { history: HistorySettings::for_feed(feed), wait: DEFAULT_REPAIR_WAIT, timeout: DEFAULT_REPAIR_TIMEOUT }
    }
}

/// The public WebSocket URL of each feed.
pub fn default_url(feed: Feed, symbols: &[String]) -> String {
    let binance = |kind: &str| {
        let streams: Vec<String> = symbols.iter().map(|s| format!("{}@{kind}", s.to_ascii_lowercase())).collect();
        format!("wss://stream.binance.com:9443/stream?streams={}", streams.join("/"))
    };
    match feed {
        Feed::BinanceTrade => binance("trade"),
        Feed::BinanceAggTrade => binance("aggTrade"),
        Feed::CoinbaseExchange => "wss://ws-feed.exchange.coinbase.com".into(),
        Feed::CoinbaseAdvanced => "wss://advanced-trade-ws.coinbase.com".into(),
        Feed::KrakenV2 => "wss://ws.kraken.com/v2".into(),
        Feed::KrakenV1 => "wss://ws.kraken.com".into(),
    }
}

/// The subscription messages sent after every (re)connect.
pub fn subscriptions(feed: Feed, symbols: &[String]) -> Vec<String> {
    let quoted: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
    let list = quoted.join(",");
    let binance = |kind: &str| {
        // The combined-stream URL names the streams already; subscribing again is harmless and
        // makes a URL without streams (a proxy, a recorded feed) work too.
        let params: Vec<String> = symbols.iter().map(|s| format!("\"{}@{kind}\"", s.to_ascii_lowercase())).collect();
        vec![format!("{{\"method\":\"SUBSCRIBE\",\"params\":[{}],\"id\":1}}", params.join(","))]
    };
    match feed {
        Feed::BinanceTrade => binance("trade"),
        Feed::BinanceAggTrade => binance("aggTrade"),
        Feed::CoinbaseExchange => {
            vec![format!("{{\"type\":\"subscribe\",\"product_ids\":[{list}],\"channels\":[\"matches\",\"heartbeat\"]}}")]
        }
        Feed::CoinbaseAdvanced => vec![
            format!("{{\"type\":\"subscribe\",\"product_ids\":[{list}],\"channel\":\"market_trades\"}}"),
            "{\"type\":\"subscribe\",\"channel\":\"heartbeats\"}".to_owned(),
        ],
        Feed::KrakenV2 => {
            vec![format!("{{\"method\":\"subscribe\",\"params\":{{\"channel\":\"trade\",\"symbol\":[{list}],\"snapshot\":true}}}}")]
        }
        Feed::KrakenV1 => vec![format!("{{\"event\":\"subscribe\",\"pair\":[{list}],\"subscription\":{{\"name\":\"trade\"}}}}")],
    }
}

/// Ids `first..=last` of `instrument` that never arrived: after the trade `after` (the newest
/// accounted for; its time bounds the missing trades' from below) and before `before` (the trade
/// that revealed them; `None` when a heartbeat did).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Missing {
    instrument: Instrument,
    after: Mark,
    before: Option<Mark>,
    first: u64,
    last: u64,
}

impl Missing {
    fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// Where one instrument's sequence stands.
#[derive(Debug)]
struct Track {
    /// The newest trade published live.
    last: Mark,
    /// Ids up to here are accounted for (published, being repaired, or reported), so that a gap
    /// is handled once, whether a later trade or a heartbeat reveals it.
    accounted: u64,
    /// Ranges being repaired, with the ids that arrived live meanwhile (published then, so the
    /// repair skips them) and their event times.
    repairing: Vec<Repairing>,
}

#[derive(Debug)]
struct Repairing {
    first: u64,
    last: u64,
    arrived: BTreeMap<u64, Timestamp>,
}

#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Duplicate,
    /// To publish; with the ids it reveals missing, if any.
    Fresh(Option<Missing>),
}

/// The trade id sequence of every instrument.
#[derive(Debug, Default)]
struct Sequence {
    tracks: HashMap<Instrument, Track>,
}

impl Sequence {
    fn admit(&mut self, trade: &Trade) -> Admission {
        let id = trade.trade_id();
        let mark = Mark { id, time: trade.event_time() };
        let Some(track) = self.tracks.get_mut(trade.instrument()) else {
            self.tracks.insert(trade.instrument().clone(), Track { last: mark, accounted: id, repairing: Vec::new() });
            return Admission::Fresh(None);
        };
        // An id of a range under repair is new until it arrives, even behind `last`.
        if let Some(range) = track.repairing.iter_mut().find(|r| (r.first..=r.last).contains(&id)) {
            return match range.arrived.entry(id) {
                btree_map::Entry::Occupied(_) => Admission::Duplicate,
                btree_map::Entry::Vacant(slot) => {
                    slot.insert(mark.time);
                    if id > track.last.id {
                        track.last = mark;
                    }
                    Admission::Fresh(None)
                }
            };
        }
        if id <= track.last.id {
            return Admission::Duplicate;
        }
        let gap = (id > track.accounted.saturating_add(1)).then(|| Missing {
            instrument: trade.instrument().clone(),
            after: Mark { id: track.accounted, time: track.last.time },
            before: Some(mark),
            first: track.accounted + 1,
            last: id - 1,
        });
        track.last = mark;
        track.accounted = track.accounted.max(id);
        Admission::Fresh(gap)
    }

    /// The ids a heartbeat says were traded that never arrived (and were not accounted for yet).
    fn heartbeat(&mut self, instrument: &Instrument, last_trade_id: u64) -> Option<Missing> {
        let track = self.tracks.get_mut(instrument)?;
        if last_trade_id <= track.accounted {
            return None;
        }
        let missing = Missing {
            instrument: instrument.clone(),
            after: Mark { id: track.accounted, time: track.last.time },
            before: None,
            first: track.accounted + 1,
            last: last_trade_id,
        };
        track.accounted = last_trade_id;
        Some(missing)
    }

    /// `missing` is being repaired: its ids are new to [`Sequence::admit`] until they arrive.
    fn start_repair(&mut self, missing: &Missing) {
        if let Some(track) = self.tracks.get_mut(&missing.instrument) {
            track.repairing.push(Repairing { first: missing.first, last: missing.last, arrived: BTreeMap::new() });
        }
    }

    /// The repair of `missing` is over: the ids of it that arrived live meanwhile.
    fn finish_repair(&mut self, missing: &Missing) -> BTreeMap<u64, Timestamp> {
        let Some(track) = self.tracks.get_mut(&missing.instrument) else { return BTreeMap::new() };
        match track.repairing.iter().position(|r| r.first == missing.first) {
            Some(i) => track.repairing.swap_remove(i).arrived,
            None => BTreeMap::new(),
        }
    }
}

/// The parts of `missing` that `known` (ids with their event times) does not hold, each with the
/// trades around it.
fn holes(missing: &Missing, known: &BTreeMap<u64, Timestamp>) -> Vec<Missing> {
    let mut out = Vec::new();
    let mut after = missing.after;
    let mut next = missing.first;
    for (&id, &time) in known.range(missing.first..=missing.last) {
        if id > next {
            out.push(Missing { instrument: missing.instrument.clone(), after, before: Some(Mark { id, time }), first: next, last: id - 1 });
        }
        after = Mark { id, time };
        next = id + 1;
    }
    if next <= missing.last {
        out.push(Missing { instrument: missing.instrument.clone(), after, before: missing.before, first: next, last: missing.last });
    }
    out
}

/// What a repair's task gives back.
struct Fetched {
    /// To fetch the next gap with.
    history: History,
    /// The trades, or why there are none.
    outcome: Result<Vec<Trade>>,
    /// Entries of the answer that could not be normalized.
    rejected: Vec<Rejected>,
    took: Duration,
}

/// A finished repair.
struct Repaired {
    missing: Missing,
    outcome: Result<Vec<Trade>>,
    rejected: Vec<Rejected>,
}

/// A session's gap repairs: a bounded queue, and one fetch at a time in a task of its own.
struct Repairs {
    feed: Feed,
    settings: RepairSettings,
    clock: Arc<dyn Clock>,
    /// Here while no fetch runs.
    history: Option<History>,
    queue: VecDeque<(Missing, String)>,
    running: Option<(Missing, JoinHandle<Fetched>)>,
}

impl Repairs {
    fn new(feed: Feed, settings: RepairSettings, clock: Arc<dyn Clock>) -> Result<Repairs> {
        let history = History::new(feed, settings.history.clone()).context("the REST history for gap repair")?;
        Ok(Repairs { feed, settings, clock, history: Some(history), queue: VecDeque::new(), running: None })
    }

    fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// Queues the repair of `missing` (`symbol`: the exchange's own), or gives it back with the
    /// reason it cannot be.
    fn push(&mut self, missing: Missing, symbol: String) -> Result<(), (Missing, String)> {
        if self.queue.len() >= MAX_QUEUED_REPAIRS {
            return Err((missing, format!("{MAX_QUEUED_REPAIRS} repairs are queued already")));
        }
        if self.history.is_none() && self.running.is_none() {
            return Err((missing, "the REST history could not be set up again after its task failed".into()));
        }
        self.queue.push_back((missing, symbol));
        self.start_next();
        Ok(())
    }

    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        let Some(mut history) = self.history.take() else { return };
        let Some((missing, symbol)) = self.queue.pop_front() else {
            self.history = Some(history);
            return;
        };
        let (after, before, timeout, received) = (missing.after, missing.before, self.settings.timeout, self.clock.now());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(timeout, history.between(&symbol, after, before, received)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(anyhow!("no complete answer within {timeout:?}")),
            };
            let rejected = history.take_rejected();
            Fetched { history, outcome, rejected, took: started.elapsed() }
        });
        self.running = Some((missing, task));
    }

    /// The next finished repair (pending while none runs). Cancel safe: the fetch goes on.
    async fn next(&mut self, metrics: &Metrics) -> Repaired {
        let Some((_, task)) = self.running.as_mut() else { return std::future::pending().await };
        let joined = task.await;
        let Some((missing, _)) = self.running.take() else { unreachable!("a repair was running") };
        let repaired = match joined {
            Ok(fetched) => {
                self.history = Some(fetched.history);
                metrics.gap_repair_seconds.observe(fetched.took.as_secs_f64());
                Repaired { missing, outcome: fetched.outcome, rejected: fetched.rejected }
            }
            Err(e) => {
                // The history went down with its task: start afresh (its settings worked once).
                self.history = History::new(self.feed, self.settings.history.clone()).ok();
                Repaired { missing, outcome: Err(anyhow!("the repair task failed: {e}")), rejected: Vec::new() }
            }
        };
        self.start_next();
        repaired
    }

    /// Stops the running repair and empties the queue: what was not repaired.
    fn abandon(&mut self) -> Vec<Missing> {
        let mut left: Vec<Missing> = Vec::new();
        if let Some((missing, task)) = self.running.take() {
            task.abort();
            left.push(missing);
        }
        left.extend(self.queue.drain(..).map(|(missing, _)| missing));
        left
    }
}

/// The next finished repair of `repairs`, if there are any (pending otherwise).
async fn next_repair(repairs: &mut Option<Repairs>, metrics: &Metrics) -> Repaired {
    match repairs {
        Some(r) => r.next(metrics).await,
        None => std::future::pending().await,
    }
}

/// Kraken v1 trades carry no ids: the parser derives `micros * 1000 + position in the message`,
/// which repeats when two messages hold trades of the same microsecond. Across the session, make
/// them unique: the n-th trade of a microsecond gets `micros * 1000 + n` (Kraken sends trades in
/// time order, which this relies on).
#[derive(Debug, Default)]
struct DerivedIds {
    last: HashMap<Instrument, (i64, u64)>,
}

impl DerivedIds {
    fn renumber(&mut self, trade: Trade) -> Result<Trade> {
        let micros = trade.event_time().as_micros();
        let n = match self.last.get(trade.instrument()) {
            Some((m, n)) if *m == micros => n + 1,
            _ => 0,
        };
        self.last.insert(trade.instrument().clone(), (micros, n));
        let id = u64::try_from(micros).unwrap_or(0) * 1000 + n;
        Ok(Trade::new(
            trade.instrument().clone(),
            id,
            trade.price(),
            trade.quantity(),
            trade.side(),
            trade.event_time(),
            trade.receive_time(),
        )?)
    }
}

fn parse(feed: Feed, text: &str, received: wick_core::Timestamp) -> Result<FeedMessage, exchange::ParseError> {
    match feed.exchange() {
        Exchange::Binance => binance::parse(text, received, false),
        Exchange::Coinbase => coinbase::parse(text, received),
        Exchange::Kraken => kraken::parse(text, received),
    }
}

/// Runs the session until shutdown.
pub async fn run(
    settings: &LiveSettings,
    producer: &Producer,
    metrics: &Metrics,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
) -> Result<Summary> {
    let exchange = settings.feed.exchange();
    let mut symbols = HashMap::new();
    for s in &settings.symbols {
        symbols.insert(exchange::instrument_for(exchange, s).with_context(|| format!("symbol {s}"))?, s.clone());
    }
    let repairs = match &settings.repair {
        Some(repair) if History::supports(settings.feed) => Some(Repairs::new(settings.feed, repair.clone(), clock.clone())?),
        _ => None,
    };
    let mut session = Session {
        settings,
        producer,
        metrics,
        clock,
        name: exchange.to_string(),
        symbols,
        sequence: Sequence::default(),
        derived: DerivedIds::default(),
        repairs,
        seen: HashMap::new(),
        connection: 0,
        backoff: settings.min_backoff,
        summary: Summary::default(),
    };
    session.follow(shutdown).await?;
    session.finish_repairs().await?;
    Ok(session.summary)
}

/// One exchange session's state across its connections.
struct Session<'a> {
    settings: &'a LiveSettings,
    producer: &'a Producer,
    metrics: &'a Metrics,
    clock: Arc<dyn Clock>,
    /// The exchange's name, as metrics label it.
    name: String,
    /// The exchange's own symbol of each instrument.
    symbols: HashMap<Instrument, String>,
    sequence: Sequence,
    derived: DerivedIds,
    /// `None` when repair is off or the feed has no REST history.
    repairs: Option<Repairs>,
    /// Feeds whose ids are no sequence: each instrument's newest trade and the connection it came
    /// on, to report what a reconnect may have missed.
    seen: HashMap<Instrument, (Mark, u64)>,
    /// Connections made so far.
    connection: u64,
    backoff: Duration,
    summary: Summary,
}

/// What woke [`Session::until`] up.
enum Wake<T> {
    Done(T),
    Repaired(Repaired),
    Stop,
}

impl Session<'_> {
    /// Connects, reads and reconnects until shutdown.
    async fn follow(&mut self, shutdown: &Shutdown) -> Result<()> {
        let settings = self.settings;
        while !shutdown.is_requested() {
            let Some(connected) = self.until(tokio_tungstenite::connect_async(settings.url.as_str()), shutdown).await? else { break };
            let mut socket = match connected {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(exchange = %self.name, url = %settings.url, error = %e, backoff = ?self.backoff, "connect failed; retrying");
                    self.metrics.reconnects.with_label_values(&[&self.name]).inc();
                    if !self.back_off(shutdown).await? {
                        break;
                    }
                    continue;
                }
            };
            self.connection += 1;
            tracing::info!(exchange = %self.name, url = %settings.url, "connected; subscribing");
            let mut subscribed = true;
            for message in subscriptions(settings.feed, &settings.symbols) {
                if let Err(e) = socket.send(Message::text(message)).await {
                    tracing::warn!(exchange = %self.name, error = %e, "subscribing failed");
                    subscribed = false;
                    break;
                }
            }
            if subscribed {
                let mut heard = Instant::now();
                loop {
                    let Some(next) = self.until(tokio::time::timeout_at(heard + settings.idle_timeout, socket.next()), shutdown).await?
                    else {
                        let _ = socket.close(None).await;
                        return Ok(());
                    };
                    let Ok(next) = next else {
                        tracing::warn!(exchange = %self.name, timeout = ?settings.idle_timeout, "connection silent; reconnecting");
                        break;
                    };
                    heard = Instant::now();
                    let text = match next {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Ping(payload))) => {
                            socket.send(Message::Pong(payload)).await.ok();
                            continue;
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            tracing::warn!(exchange = %self.name, error = %e, "connection lost");
                            break;
                        }
                    };
                    self.on_message(text.as_str()).await?;
                }
            }
            self.metrics.reconnects.with_label_values(&[&self.name]).inc();
            tracing::info!(exchange = %self.name, backoff = ?self.backoff, "disconnected; reconnecting");
            if !self.back_off(shutdown).await? {
                break;
            }
        }
        Ok(())
    }

    /// Awaits `work`, publishing the repairs that finish meanwhile; `None` if shutdown comes first.
    async fn until<T>(&mut self, work: impl Future<Output = T>, shutdown: &Shutdown) -> Result<Option<T>> {
        tokio::pin!(work);
        loop {
            let wake = tokio::select! {
                done = &mut work => Wake::Done(done),
                repaired = next_repair(&mut self.repairs, self.metrics) => Wake::Repaired(repaired),
                _ = shutdown.requested() => Wake::Stop,
            };
            match wake {
                Wake::Done(done) => return Ok(Some(done)),
                Wake::Repaired(repaired) => self.repaired(repaired).await?,
                Wake::Stop => return Ok(None),
            }
        }
    }

    /// Waits before the next connect (doubling the wait for the one after); false on shutdown.
    async fn back_off(&mut self, shutdown: &Shutdown) -> Result<bool> {
        let waited = self.until(tokio::time::sleep(self.backoff), shutdown).await?.is_some();
        self.backoff = (self.backoff * 2).min(self.settings.max_backoff);
        Ok(waited)
    }

    async fn on_message(&mut self, text: &str) -> Result<()> {
        match parse(self.settings.feed, text, self.clock.now()) {
            Ok(FeedMessage::Trades(trades)) => {
                // Trades flowing mean the session is healthy: the next reconnect starts fast.
                self.backoff = self.settings.min_backoff;
                self.on_trades(trades).await?;
            }
            Ok(FeedMessage::Heartbeat { instrument, last_trade_id }) => {
                if self.settings.feed.sequential_ids() {
                    if let Some(missing) = self.sequence.heartbeat(&instrument, last_trade_id) {
                        self.gap(missing).await?;
                    }
                }
            }
            Ok(FeedMessage::Control(what)) => tracing::debug!(exchange = %self.name, what, "control message"),
            Err(e) => {
                // As in replay, a refused input counts as read and as rejected.
                self.summary.read += 1;
                self.summary.rejected += 1;
                self.metrics.rejected.with_label_values(&[&self.name, reason_label(&e)]).inc();
                let letter = DeadLetter { raw: text.as_bytes().to_vec(), reason: e.to_string(), source: self.name.clone() };
                self.producer.dead_letter(letter).await?;
            }
        }
        Ok(())
    }

    async fn on_trades(&mut self, mut trades: Vec<Trade>) -> Result<()> {
        if self.settings.feed == Feed::KrakenV1 {
            // No exchange ids: nothing to de-duplicate against, only to number uniquely.
            for trade in trades {
                self.summary.read += 1;
                let trade = self.derived.renumber(trade)?;
                self.across_reconnect(&trade, true).await?;
                self.producer.publish(trade).await?;
            }
            return Ok(());
        }
        // Some feeds list a message's trades newest first: admit them in id order.
        trades.sort_by(|a, b| a.instrument().as_str().cmp(b.instrument().as_str()).then(a.trade_id().cmp(&b.trade_id())));
        let sequential = self.settings.feed.sequential_ids();
        for trade in trades {
            self.summary.read += 1;
            match self.sequence.admit(&trade) {
                Admission::Fresh(gap) => {
                    match gap {
                        // The repair goes first, so that its older trades precede this one.
                        Some(missing) if sequential => self.gap(missing).await?,
                        _ if !sequential => self.across_reconnect(&trade, true).await?,
                        _ => {}
                    }
                    self.producer.publish(trade).await?;
                }
                Admission::Duplicate => {
                    if !sequential {
                        self.across_reconnect(&trade, false).await?;
                    }
                    self.metrics.duplicates.with_label_values(&[&self.name]).inc();
                }
            }
        }
        Ok(())
    }

    /// Ids found missing: counted, then repaired (waiting for the repair up to its `wait` when no
    /// other one runs) or reported.
    async fn gap(&mut self, missing: Missing) -> Result<()> {
        let (count, revealed_by) = (missing.count(), if missing.before.is_some() { "trade" } else { "heartbeat" });
        tracing::warn!(exchange = %self.name, instrument = %missing.instrument, first = missing.first, last = missing.last, missed = count, revealed_by, "gap in the trade sequence");
        self.metrics.gaps.with_label_values(&[&self.name]).inc_by(count);
        if self.settings.repair.is_none() {
            return Ok(());
        }
        let Some(repairs) = self.repairs.as_mut() else {
            let why = format!("the {:?} feed has no REST history to repair from", self.settings.feed);
            return self.report(&missing, &why).await;
        };
        if count > MAX_REPAIR_IDS {
            let why = format!("{count} trades missing, more than a live repair fetches ({MAX_REPAIR_IDS}): backfill them");
            return self.report(&missing, &why).await;
        }
        let symbol = match self.symbols.get(&missing.instrument) {
            Some(symbol) => symbol.clone(),
            None => exchange::symbol_for(&missing.instrument)?.1,
        };
        let idle = !repairs.busy();
        self.sequence.start_repair(&missing);
        if let Err((missing, why)) = repairs.push(missing, symbol) {
            self.sequence.finish_repair(&missing);
            return self.report(&missing, &why).await;
        }
        if idle {
            self.wait_for_repairs().await?;
        }
        Ok(())
    }

    /// Publishes the repairs that finish within the repair's `wait`.
    async fn wait_for_repairs(&mut self) -> Result<()> {
        let Some(wait) = self.settings.repair.as_ref().map(|r| r.wait) else { return Ok(()) };
        let deadline = Instant::now() + wait;
        while self.repairs.as_ref().is_some_and(Repairs::busy) {
            match tokio::time::timeout_at(deadline, next_repair(&mut self.repairs, self.metrics)).await {
                Ok(repaired) => self.repaired(repaired).await?,
                Err(_) => {
                    tracing::info!(exchange = %self.name, ?wait, "gap repair still running; the live stream goes on and the repaired trades will follow");
                    break;
                }
            }
        }
        Ok(())
    }

    /// A repair's outcome: the trades fetched are published in id order (but those that arrived
    /// live meanwhile), entries that could not be normalized are dead-lettered with their reason,
    /// what is still missing is reported.
    async fn repaired(&mut self, repaired: Repaired) -> Result<()> {
        let Repaired { missing, outcome, rejected } = repaired;
        let mut arrived = self.sequence.finish_repair(&missing);
        let (fetched, why) = match outcome {
            Ok(trades) => {
                let mut fetched = BTreeMap::new();
                for trade in trades {
                    let id = trade.trade_id();
                    // The history answers for the range asked; anything else (a heartbeat's range
                    // is open-ended) is not this repair's to publish.
                    if trade.instrument() == &missing.instrument
                        && (missing.first..=missing.last).contains(&id)
                        && !arrived.contains_key(&id)
                    {
                        fetched.entry(id).or_insert(trade);
                    }
                }
                (fetched, "the exchange's trade history does not hold these ids".to_owned())
            }
            Err(e) => (BTreeMap::new(), format!("{e:#}")),
        };
        let symbol = self.symbols.get(&missing.instrument).cloned().unwrap_or_default();
        let in_range = |id: u64| (missing.first..=missing.last).contains(&id);
        for entry in rejected.into_iter().filter(|e| e.at.is_none_or(|at| in_range(at.id))) {
            self.summary.read += 1;
            self.summary.rejected += 1;
            self.metrics.rejected.with_label_values(&[&self.name, "invalid_history_entry"]).inc();
            if let Some(at) = entry.at {
                arrived.insert(at.id, at.time);
            }
            let source = format!("gap-repair:{}:{symbol}", self.name);
            self.producer.dead_letter(DeadLetter { raw: entry.raw, reason: entry.reason, source }).await?;
        }
        // The ids the repair accounted for: arrived live, fetched, or refused with a reason.
        let mut known = arrived;
        known.extend(fetched.values().map(|t| (t.trade_id(), t.event_time())));
        let left = holes(&missing, &known);
        if !fetched.is_empty() {
            let n = fetched.len() as u64;
            tracing::info!(exchange = %self.name, instrument = %missing.instrument, first = missing.first, last = missing.last, repaired = n, "gap repaired from the REST history");
            self.summary.read += n;
            self.metrics.gap_trades_repaired.with_label_values(&[&self.name]).inc_by(n);
            self.producer.publish_many(fetched.into_values().collect()).await?;
        }
        for hole in &left {
            self.report(hole, &why).await?;
        }
        Ok(())
    }

    /// At shutdown: the repairs that finish within one `wait` are published, the others reported.
    async fn finish_repairs(&mut self) -> Result<()> {
        self.wait_for_repairs().await?;
        let left = self.repairs.as_mut().map(Repairs::abandon).unwrap_or_default();
        for missing in left {
            let arrived = self.sequence.finish_repair(&missing);
            for hole in holes(&missing, &arrived) {
                self.report(&hole, "the session stopped before the repair was done").await?;
            }
        }
        Ok(())
    }

    /// Feeds whose ids are no sequence: the first trade of an instrument after a reconnect, unless
    /// seen already (`fresh` false: the snapshot overlapped), may follow missing trades.
    async fn across_reconnect(&mut self, trade: &Trade, fresh: bool) -> Result<()> {
        let mark = Mark { id: trade.trade_id(), time: trade.event_time() };
        let previous = self.seen.insert(trade.instrument().clone(), (mark, self.connection));
        let Some((before, connection)) = previous else { return Ok(()) };
        if connection == self.connection || !fresh {
            return Ok(());
        }
        let why = format!("trades between these two may be missing: the {:?} feed has no trade id sequence to tell", self.settings.feed);
        if self.settings.repair.is_none() {
            tracing::warn!(exchange = %self.name, instrument = %trade.instrument(), after = %before.time, before = %mark.time, "{why}");
            return Ok(());
        }
        self.report_span(trade.instrument(), None, before, Some(mark), &why).await
    }

    async fn report(&mut self, missing: &Missing, why: &str) -> Result<()> {
        self.report_span(&missing.instrument, Some((missing.first, missing.last)), missing.after, missing.before, why).await
    }

    /// Trades that could not be repaired: logged, counted and dead-lettered with reason
    /// `unrepaired_gap`, so that an operator can backfill them. `ids`: the missing ids, when the
    /// feed tells them.
    async fn report_span(
        &mut self,
        instrument: &Instrument,
        ids: Option<(u64, u64)>,
        after: Mark,
        before: Option<Mark>,
        why: &str,
    ) -> Result<()> {
        let count = ids.map(|(first, last)| last - first + 1);
        let symbol = self.symbols.get(instrument).cloned().unwrap_or_default();
        tracing::error!(exchange = %self.name, %instrument, from_id = ?ids.map(|i| i.0), to_id = ?ids.map(|i| i.1), missing = ?count, after = %after.time, error = why, "trades missing from the feed could not be repaired");
        self.metrics.gap_trades_unrepaired.with_label_values(&[&self.name]).inc_by(count.unwrap_or(0));
        self.metrics.gap_ranges_unrepaired.with_label_values(&[&self.name]).inc();
        let mark = |m: Mark| serde_json::json!({"id": m.id, "time": m.time.to_string()});
        let raw = serde_json::json!({
            "exchange": self.name,
            "symbol": symbol,
            "instrument": instrument.as_str(),
            "from_id": ids.map(|i| i.0),
            "to_id": ids.map(|i| i.1),
            "missing": count,
            "after": mark(after),
            "before": before.map(mark),
            "error": why,
        });
        let letter = DeadLetter { raw: serde_json::to_vec(&raw)?, reason: UNREPAIRED_GAP.to_owned(), source: self.name.clone() };
        self.producer.dead_letter(letter).await
    }
}

/// The dead-letter reason of trades a gap repair could not fetch.
pub const UNREPAIRED_GAP: &str = "unrepaired_gap";

fn reason_label(e: &exchange::ParseError) -> &'static str {
    match e {
        exchange::ParseError::Json(_) => "malformed",
        exchange::ParseError::UnknownType(_) => "unknown_type",
        exchange::ParseError::Field { .. } => "invalid_field",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_core::{TakerSide, Timestamp};

    fn trade(id: u64, micros: i64) -> Trade {
        let t = Timestamp::from_micros(micros).unwrap();
        Trade::new(Instrument::new("COINBASE:BTC-USD").unwrap(), id, "1".parse().unwrap(), "1".parse().unwrap(), TakerSide::Buy, t, t)
            .unwrap()
    }

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros).unwrap()
    }

    fn mark(id: u64, micros: i64) -> Mark {
        Mark { id, time: at(micros) }
    }

    fn gap_of(admission: Admission) -> Missing {
        match admission {
            Admission::Fresh(Some(missing)) => missing,
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    #[test]
    fn gaps_are_found_once_whoever_reveals_them() {
        let mut s = Sequence::default();
        let btc = Instrument::new("COINBASE:BTC-USD").unwrap();
        assert_eq!(s.admit(&trade(12, 100)), Admission::Fresh(None));
        // Heartbeats keep saying 13 while 13 has not arrived: one missing trade, found once.
        let missing = s.heartbeat(&btc, 13).unwrap();
        assert_eq!((missing.first, missing.last, missing.after, missing.before), (13, 13, mark(12, 100), None));
        assert_eq!(s.heartbeat(&btc, 13), None);
        // 13 never comes; 14 does: 13 was found already.
        assert_eq!(s.admit(&trade(14, 200)), Admission::Fresh(None));
        assert_eq!(s.admit(&trade(14, 200)), Admission::Duplicate);
        let missing = gap_of(s.admit(&trade(17, 300)));
        assert_eq!((missing.first, missing.last, missing.after, missing.before), (15, 16, mark(14, 200), Some(mark(17, 300))));
        assert_eq!(missing.count(), 2);
        assert_eq!(s.heartbeat(&btc, 17), None);
    }

    #[test]
    fn ids_under_repair_that_arrive_live_are_published_once() {
        let mut s = Sequence::default();
        let btc = Instrument::new("COINBASE:BTC-USD").unwrap();
        s.admit(&trade(10, 100));
        let missing = gap_of(s.admit(&trade(15, 500)));
        s.start_repair(&missing);
        assert_eq!(s.admit(&trade(12, 200)), Admission::Fresh(None), "a straggler of the range is new");
        assert_eq!(s.admit(&trade(12, 200)), Admission::Duplicate);
        assert_eq!(s.admit(&trade(9, 50)), Admission::Duplicate);
        let arrived = s.finish_repair(&missing);
        assert_eq!(arrived, BTreeMap::from([(12, at(200))]));
        assert_eq!(s.admit(&trade(13, 300)), Admission::Duplicate, "once the repair is over, the range is old");

        // A heartbeat's range lies ahead of the last trade: a live arrival inside it moves it on.
        let missing = s.heartbeat(&btc, 17).unwrap();
        s.start_repair(&missing);
        assert_eq!(s.admit(&trade(17, 700)), Admission::Fresh(None));
        assert_eq!(s.admit(&trade(17, 700)), Admission::Duplicate);
        assert_eq!(s.admit(&trade(18, 800)), Admission::Fresh(None), "16 and 17 were accounted for by the heartbeat");
        assert_eq!(s.finish_repair(&missing), BTreeMap::from([(17, at(700))]));
    }

    #[test]
    fn holes_are_the_ranges_nobody_has_with_the_trades_around_them() {
        let btc = Instrument::new("COINBASE:BTC-USD").unwrap();
        let missing = Missing { instrument: btc.clone(), after: mark(10, 100), before: Some(mark(16, 600)), first: 11, last: 15 };
        let hole = |first, last, after, before| Missing { instrument: btc.clone(), after, before, first, last };
        assert_eq!(holes(&missing, &BTreeMap::new()), vec![missing.clone()]);
        let known = BTreeMap::from([(12, at(200)), (15, at(500)), (99, at(900))]);
        assert_eq!(
            holes(&missing, &known),
            vec![hole(11, 11, mark(10, 100), Some(mark(12, 200))), hole(13, 14, mark(12, 200), Some(mark(15, 500)))]
        );
        let all: BTreeMap<u64, Timestamp> = (11..=15).map(|id| (id, at(id as i64 * 100))).collect();
        assert_eq!(holes(&missing, &all), vec![]);
        // A heartbeat's range keeps its open end.
        let open = Missing { before: None, ..missing.clone() };
        assert_eq!(holes(&open, &BTreeMap::from([(11, at(110))])), vec![hole(12, 15, mark(11, 110), None)]);
    }

    #[test]
    fn derived_ids_stay_unique_within_a_microsecond() {
        let mut d = DerivedIds::default();
        let ids: Vec<u64> =
            [(5, 100), (5, 100), (5, 101), (5, 100)].iter().map(|(id, m)| d.renumber(trade(*id, *m)).unwrap().trade_id()).collect();
        assert_eq!(ids, vec![100_000, 100_001, 101_000, 100_000]);
    }

    #[test]
    fn feeds_belong_to_their_exchange() {
        assert_eq!(Feed::of(Exchange::Kraken, Some("v1")).unwrap(), Feed::KrakenV1);
        assert_eq!(Feed::of(Exchange::Binance, None).unwrap(), Feed::BinanceTrade);
        assert!(Feed::of(Exchange::Coinbase, Some("v1")).unwrap_err().contains("coinbase has no feed"));
        assert!(subscriptions(Feed::KrakenV2, &["BTC/USD".into()])[0].contains(r#""snapshot":true"#));
    }
}
