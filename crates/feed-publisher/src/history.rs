//! Historical trades over the exchanges' public REST APIs, normalized exactly like the live feed
//! of the same trades (same instrument, id, price, quantity, taker side and event time), so that
//! history and live data de-duplicate against each other. Used by `backfill` and by the live
//! session's gap repair.
//!
//! | feed | endpoint | paged by |
//! |---|---|---|
//! | Binance `trade` | `GET /api/v3/historicalTrades?fromId=` (weight 25) | trade id |
//! | Binance `aggTrade` | `GET /api/v3/aggTrades?fromId=` (weight 2) | aggregate id |
//! | Coinbase Exchange `matches` | `GET /products/<id>/trades?after=` (newest first) | trade id |
//! | Kraken v2 `trade` | `GET /0/public/Trades?since=<ns>` | time, then trade id |
//!
//! Kraken v1 trades carry no exchange id (Wick derives one from the time) and Coinbase Advanced
//! Trade's ids are not promised to be the Exchange's: neither can be matched with REST history.
//!
//! Requests go through a rate limiter (governor) and are retried with jittered exponential
//! back-off (backon): HTTP 429, 418 (Binance's IP ban) and Kraken's HTTP 200 with
//! `EGeneral:Too many requests` / `EAPI:Rate limit exceeded` wait the answer's `Retry-After` (at
//! least the back-off); 5xx answers and connection errors the back-off; any other 4xx (or Kraken
//! error) fails at once with the exchange's message. Binance's `X-MBX-USED-WEIGHT-1M` is read
//! from every answer: when another client on the same address has used most of the minute's
//! weight, the next request waits for the next minute.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::value::RawValue;
use wick_core::{Instrument, TakerSide, Timestamp, Trade};

use crate::exchange::{self, coinbase, kraken, Exchange, ParseError};
use crate::live::Feed;

/// Binance's public REST API.
pub const BINANCE_URL: &str = "https://api.binance.com";
/// Coinbase Exchange's public REST API.
pub const COINBASE_URL: &str = "https://api.exchange.coinbase.com";
/// Kraken's public REST API.
pub const KRAKEN_URL: &str = "https://api.kraken.com";

/// Binance's request weight budget per minute and IP address.
pub const BINANCE_WEIGHT_PER_MINUTE: u32 = 6_000;
/// `GET /api/v3/aggTrades`' weight.
pub const BINANCE_AGG_TRADES_WEIGHT: u32 = 2;
/// `GET /api/v3/historicalTrades`' weight.
pub const BINANCE_HISTORICAL_TRADES_WEIGHT: u32 = 25;

/// Trades per page: the most each endpoint returns.
pub const PAGE: usize = 1000;

/// Binance's longest `startTime`..`endTime` span for `aggTrades`, in milliseconds.
const BINANCE_WINDOW_MS: i64 = 3_600_000;

/// Above this share of Binance's weight budget (reported by the answers), wait for the next minute.
const BINANCE_WEIGHT_CEILING: u32 = BINANCE_WEIGHT_PER_MINUTE * 9 / 10;

/// How history is fetched: where from, how fast, how stubbornly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistorySettings {
    /// The REST API's base URL (tests point it at a local server).
    pub base_url: String,
    /// Requests per minute, a second's worth of them at once at most.
    pub requests_per_minute: NonZeroU32,
    /// Retries of one request (rate limiting, outages) before giving up.
    pub max_retries: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl HistorySettings {
    /// The exchange's public URL and a documented safe rate for the history of its default live
    /// feed (Binance `trade`, Coinbase Exchange, Kraken v2): see [`HistorySettings::for_feed`].
    pub fn defaults(exchange: Exchange) -> HistorySettings {
        let feed = match exchange {
            Exchange::Binance => Feed::BinanceTrade,
            Exchange::Coinbase => Feed::CoinbaseExchange,
            Exchange::Kraken => Feed::KrakenV2,
        };
        HistorySettings::for_feed(feed)
    }

    /// The exchange's public URL and a documented safe rate for the history of `feed`:
    ///
    /// - Binance allows 6,000 request weight per minute and IP; half of it leaves room for other
    ///   clients on the same address: 120 `historicalTrades` (weight 25) or 1,500 `aggTrades`
    ///   (weight 2) per minute.
    /// - Coinbase Exchange allows public endpoints 10 requests per second and IP (bursts of 15);
    ///   half of it: 300 per minute.
    /// - Kraken says public calls "at a frequency of 1 per second (or less) would remain within the
    ///   rate limits": 60 per minute.
    pub fn for_feed(feed: Feed) -> HistorySettings {
        let (base_url, per_minute) = match feed {
            Feed::BinanceTrade => (BINANCE_URL, BINANCE_WEIGHT_PER_MINUTE / 2 / BINANCE_HISTORICAL_TRADES_WEIGHT),
            Feed::BinanceAggTrade => (BINANCE_URL, BINANCE_WEIGHT_PER_MINUTE / 2 / BINANCE_AGG_TRADES_WEIGHT),
            Feed::CoinbaseExchange | Feed::CoinbaseAdvanced => (COINBASE_URL, 300),
            Feed::KrakenV2 | Feed::KrakenV1 => (KRAKEN_URL, 60),
        };
        HistorySettings {
            base_url: base_url.to_owned(),
            requests_per_minute: NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN),
            max_retries: 8,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A position in an instrument's trade sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub id: u64,
    pub time: Timestamp,
}

/// Where the next page of history starts: the first trade id wanted, and a time no wanted trade
/// is older than (Kraken pages by time; the others by id alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub next_id: u64,
    pub since: Timestamp,
}

impl Position {
    /// The trades after `mark`.
    pub fn after(mark: Mark) -> Position {
        Position { next_id: mark.id.saturating_add(1), since: mark.time }
    }
}

/// An entry of a history page that could not be normalized: its raw JSON and why, for the
/// dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub raw: Vec<u8>,
    pub reason: String,
    /// Its id and time, when they could be read.
    pub at: Option<Mark>,
}

/// One request's worth of history, in id order.
#[derive(Debug)]
pub struct Page {
    /// The entries at or after the position asked for, in id order: trades, or why an entry
    /// could not be normalized.
    pub entries: Vec<Result<Trade, Rejected>>,
    /// The last entry of the page with a readable id, if any.
    pub last: Option<Mark>,
    /// Where the following page starts.
    pub next: Position,
    /// The page reached the newest trade: there is nothing after it yet.
    pub newest: bool,
}

/// What the history requests met so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryCounters {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests retried (rate limits, outages).
    pub retried: u64,
    /// Rate-limit answers: HTTP 429, Kraken's rate-limit errors.
    pub rate_limited: u64,
    /// Binance IP bans (HTTP 418).
    pub banned: u64,
    /// Waits for the next minute because Binance reported most of its weight budget used.
    pub weight_waits: u64,
}

/// Fetches one instrument's history at a time for one live feed.
pub struct History {
    feed: Feed,
    base_url: String,
    fetcher: Fetcher,
    rejected: Vec<Rejected>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("feed", &self.feed)
            .field("base_url", &self.base_url)
            .field("counters", &self.fetcher.counters)
            .finish()
    }
}

impl History {
    pub fn new(feed: Feed, settings: HistorySettings) -> Result<History> {
        let base_url = settings.base_url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base_url).with_context(|| format!("history base URL {base_url:?}"))?;
        Ok(History { feed, base_url, fetcher: Fetcher::new(&settings)?, rejected: Vec::new() })
    }

    /// Whether this feed's history can be fetched by id (not Kraken v1, whose ids Wick derives
    /// from times, nor Coinbase Advanced Trade).
    pub fn supports(feed: Feed) -> bool {
        !matches!(feed, Feed::KrakenV1 | Feed::CoinbaseAdvanced)
    }

    pub fn feed(&self) -> Feed {
        self.feed
    }

    pub fn counters(&self) -> HistoryCounters {
        self.fetcher.counters
    }

    /// The entries [`History::between`] could not normalize since the last call (raw JSON and
    /// reason, for the dead-letter topic).
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    /// The trades of `symbol` (exchange's own symbol, e.g. BTCUSDT, BTC-USD, BTC/USD) strictly
    /// after `after` and strictly before `before` (None: up to the newest), in id order,
    /// normalized exactly like `feed`'s live trades, with `received` as their receive time.
    /// Entries that cannot be normalized are left out and kept for [`History::take_rejected`].
    pub async fn between(&mut self, symbol: &str, after: Mark, before: Option<Mark>, received: Timestamp) -> Result<Vec<Trade>> {
        let mut position = Position::after(after);
        let mut trades = Vec::new();
        loop {
            let (page, reached_before) = self.page_before(symbol, position, before.map(|b| b.id), received).await?;
            for entry in page.entries {
                match entry {
                    Ok(trade) => trades.push(trade),
                    Err(rejected) => self.rejected.push(rejected),
                }
            }
            if page.newest || reached_before {
                return Ok(trades);
            }
            position = page.next;
        }
    }

    /// The position of the first trade of `symbol` at or after `from` and before `until`, if any
    /// (Binance: found with `aggTrades`' time windows; Coinbase: by bisecting trade ids; Kraken:
    /// the time itself, as Kraken pages by time).
    pub async fn first_at(&mut self, symbol: &str, from: Timestamp, until: Timestamp) -> Result<Option<Position>> {
        self.check_supported()?;
        match self.feed.exchange() {
            Exchange::Binance => self.binance_first_at(symbol, from, until).await,
            Exchange::Coinbase => self.coinbase_first_at(symbol, from, until).await,
            Exchange::Kraken => Ok(Some(Position { next_id: 0, since: from })),
        }
    }

    /// One request's worth of the trades of `symbol` from `position` on, in id order.
    pub async fn page(&mut self, symbol: &str, position: Position, received: Timestamp) -> Result<Page> {
        Ok(self.page_before(symbol, position, None, received).await?.0)
    }

    /// [`History::page`] without the entries from id `before` on; and whether it reached them.
    async fn page_before(&mut self, symbol: &str, position: Position, before: Option<u64>, received: Timestamp) -> Result<(Page, bool)> {
        self.check_supported()?;
        let instrument = exchange::instrument_for(self.feed.exchange(), symbol).with_context(|| format!("symbol {symbol}"))?;
        let (url, request_end) = self.page_url(symbol, position);
        let check: BodyCheck = if self.feed.exchange() == Exchange::Kraken { kraken_errors } else { no_errors };
        let body = self.fetcher.get(&url, check).await?;
        let entries = match self.feed {
            Feed::BinanceTrade => entries(&body, |e| binance_trade(e, &instrument, received)),
            Feed::BinanceAggTrade => entries(&body, |e| binance_agg_trade(e, &instrument, received)),
            Feed::CoinbaseExchange => entries(&body, |e| coinbase_trade(e, &instrument, received)).map(|mut e| {
                // Newest first.
                e.reverse();
                e
            }),
            Feed::KrakenV2 => kraken_entries(&body, &instrument, received),
            Feed::KrakenV1 | Feed::CoinbaseAdvanced => no_history(self.feed),
        }
        .with_context(|| format!("GET {url}: not the documented trades page"))?;
        let (page, reached_before) = assemble(self.feed, position, request_end, before, entries);
        if !page.newest && !reached_before && page.next == position {
            bail!("GET {url}: a full page without a readable trade id after {position:?}: paging would not move on");
        }
        Ok((page, reached_before))
    }

    fn check_supported(&self) -> Result<()> {
        if !History::supports(self.feed) {
            bail!(
                "{:?} trades cannot be fetched from REST history by id (Kraken v1 trades carry no exchange ids, Coinbase Advanced \
                 Trade's ids are not the Exchange API's): use the kraken v2 or coinbase exchange feed",
                self.feed
            );
        }
        Ok(())
    }

    /// The URL of the page from `position`, and for Coinbase the id its trades end before.
    fn page_url(&self, symbol: &str, position: Position) -> (String, Option<u64>) {
        let base = &self.base_url;
        match self.feed {
            Feed::BinanceTrade | Feed::BinanceAggTrade => {
                let endpoint = if self.feed == Feed::BinanceTrade { "historicalTrades" } else { "aggTrades" };
                let symbol = symbol.to_ascii_uppercase();
                (format!("{base}/api/v3/{endpoint}?symbol={symbol}&fromId={}&limit={PAGE}", position.next_id), None)
            }
            // `after=X` answers the trades with ids below X, newest first: with consecutive ids per
            // product, after = next + 1000 is exactly the next 1000 trades.
            _ if self.feed.exchange() == Exchange::Coinbase => {
                let end = position.next_id.saturating_add(PAGE as u64);
                (format!("{base}/products/{symbol}/trades?limit={PAGE}&after={end}"), Some(end))
            }
            _ => (format!("{base}/0/public/Trades?pair={}&since={}&count={PAGE}", kraken_pair(symbol), kraken_since(position.since)), None),
        }
    }

    async fn binance_first_at(&mut self, symbol: &str, from: Timestamp, until: Timestamp) -> Result<Option<Position>> {
        let symbol = symbol.to_ascii_uppercase();
        let mut window = from.as_millis();
        while window < until.as_millis() {
            let window_end = (window + BINANCE_WINDOW_MS).min(until.as_millis()) - 1;
            let url = format!("{}/api/v3/aggTrades?symbol={symbol}&startTime={window}&endTime={window_end}&limit=1", self.base_url);
            let body = self.fetcher.get(&url, no_errors).await?;
            let first: Vec<AggTradeBounds> = serde_json::from_slice(&body).with_context(|| format!("GET {url}: not an aggTrades array"))?;
            if let Some(first) = first.first() {
                let next_id = if self.feed == Feed::BinanceTrade { first.f } else { first.a };
                let since = Timestamp::from_millis(first.time).with_context(|| format!("GET {url}: aggregate trade {} time", first.a))?;
                return Ok(Some(Position { next_id, since }));
            }
            window += BINANCE_WINDOW_MS;
        }
        Ok(None)
    }

    /// The trade with the highest id at most `id` (`None` for the newest), as (id, time).
    async fn coinbase_probe(&mut self, symbol: &str, id: Option<u64>) -> Result<Option<(u64, Timestamp)>> {
        let url = match id {
            Some(id) => format!("{}/products/{symbol}/trades?limit=1&after={}", self.base_url, id.saturating_add(1)),
            None => format!("{}/products/{symbol}/trades?limit=1", self.base_url),
        };
        let body = self.fetcher.get(&url, no_errors).await?;
        let page: Vec<CoinbaseBounds<'_>> = serde_json::from_slice(&body).with_context(|| format!("GET {url}: not a trades array"))?;
        page.first()
            .map(|t| Ok((t.trade_id, Timestamp::parse_rfc3339(t.time).with_context(|| format!("GET {url}: trade {} time", t.trade_id))?)))
            .transpose()
    }

    /// Trade ids are consecutive and in time order: bisect for the first at or after `from`.
    async fn coinbase_first_at(&mut self, symbol: &str, from: Timestamp, until: Timestamp) -> Result<Option<Position>> {
        let Some((newest, newest_time)) = self.coinbase_probe(symbol, None).await? else { return Ok(None) };
        if newest_time < from {
            return Ok(None);
        }
        // Invariant: the trade at `high` is at or after `from`; none at or below `low` is.
        let (mut low, mut high, mut found) = (0u64, newest, newest_time);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            match self.coinbase_probe(symbol, Some(middle)).await? {
                Some((id, time)) if time >= from => (high, found) = (id, time),
                // The highest trade at most `middle` is before `from`: so is every one below it.
                Some(_) | None => low = middle,
            }
        }
        Ok((found < until).then_some(Position { next_id: high, since: found }))
    }
}

fn no_history(feed: Feed) -> Result<Vec<Entry>, ParseError> {
    Err(ParseError::UnknownType(format!("{feed:?} has no REST history")))
}

/// Kraken's REST pair for a WebSocket symbol: `BTC/USD` is `XBTUSD`.
fn kraken_pair(symbol: &str) -> String {
    symbol.split('/').map(|asset| if asset.eq_ignore_ascii_case("BTC") { "XBT".to_owned() } else { asset.to_ascii_uppercase() }).collect()
}

/// Kraken's `since` (nanoseconds, exclusive) that includes every trade of `time`'s microsecond.
fn kraken_since(time: Timestamp) -> u64 {
    u64::try_from(time.as_micros()).unwrap_or(0).saturating_mul(1000).saturating_sub(1)
}

/// One entry of a page: its id and time when readable, and the trade or why it was refused.
#[derive(Debug)]
struct Entry {
    id: Option<u64>,
    time: Option<Timestamp>,
    trade: Result<Trade, ParseError>,
    raw: String,
}

impl Entry {
    fn refused(raw: &str, error: ParseError) -> Entry {
        Entry { id: None, time: None, trade: Err(error), raw: raw.to_owned() }
    }
}

/// A JSON array of objects, each parsed alone so that one bad entry is one rejection.
fn entries(body: &[u8], parse: impl Fn(&str) -> Entry) -> Result<Vec<Entry>, ParseError> {
    let list: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(list.iter().map(|raw| parse(raw.get())).collect())
}

/// Keeps the entries at or after `position` (Coinbase and Kraken answer some before it) and
/// before id `before`, and tells where the next page starts, whether this one reached the newest
/// trade, and whether it reached `before`.
fn assemble(feed: Feed, position: Position, request_end: Option<u64>, before: Option<u64>, entries: Vec<Entry>) -> (Page, bool) {
    let served = entries.len();
    let latest = entries.iter().filter_map(|e| e.time).max();
    let mut page = Page { entries: Vec::with_capacity(served), last: None, next: position, newest: served < PAGE };
    let mut reached_before = false;
    // An entry without a readable id belongs where it stands: after the previous readable one.
    // Binance answers only ids from `fromId` on, so an unreadable first entry is in range too.
    let mut previous: Option<Mark> = None;
    let mut in_range = matches!(feed, Feed::BinanceTrade | Feed::BinanceAggTrade);
    for entry in entries {
        if let Some(id) = entry.id {
            if before.is_some_and(|b| id >= b) {
                reached_before = true;
                break;
            }
            in_range = id >= position.next_id;
            let time = entry.time.or(previous.map(|p| p.time)).unwrap_or(position.since);
            previous = Some(Mark { id, time });
        }
        if !in_range {
            continue;
        }
        let at = entry.id.and(previous);
        if at.is_some() {
            page.last = at;
        }
        page.entries.push(entry.trade.map_err(|e| Rejected { raw: entry.raw.into_bytes(), reason: e.to_string(), at }));
    }
    if let Some(last) = page.last {
        page.next = Position::after(last);
    } else if served == PAGE {
        // A full page without a trade at or after the position: move on rather than ask for the
        // same page forever (Kraken: a thousand older trades within the first microsecond asked
        // for; Coinbase: a thousand ids without a trade of this product, not its numbering).
        page.next = match request_end {
            Some(end) => Position { next_id: end, since: position.since },
            None => Position { next_id: position.next_id, since: latest.map_or(position.since, |t| t.max(position.since)) },
        };
    }
    if let Some(end) = request_end {
        // Coinbase: the page holds the ids below `end`; if the last of them is missing, nothing
        // newer exists (ids are consecutive).
        page.newest = match page.last {
            Some(last) => last.id.saturating_add(1) < end,
            None => served < PAGE,
        };
    }
    (page, reached_before)
}

/// `GET /api/v3/historicalTrades` entry:
/// `{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}`.
#[derive(Deserialize)]
struct BinanceTrade<'a> {
    id: Option<u64>,
    price: Option<&'a str>,
    qty: Option<&'a str>,
    time: Option<i64>,
    #[serde(rename = "isBuyerMaker")]
    is_buyer_maker: Option<bool>,
}

/// `GET /api/v3/aggTrades` entry: `{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}`.
#[derive(Deserialize)]
struct BinanceAggTrade<'a> {
    a: Option<u64>,
    p: Option<&'a str>,
    q: Option<&'a str>,
    #[serde(rename = "T")]
    time: Option<i64>,
    m: Option<bool>,
}

/// What finding a start needs of an aggregate trade.
#[derive(Deserialize)]
struct AggTradeBounds {
    a: u64,
    f: u64,
    #[serde(rename = "T")]
    time: i64,
}

fn required<T>(name: &'static str, value: Option<T>) -> Result<T, ParseError> {
    value.ok_or_else(|| exchange::field(name, "missing"))
}

/// As `exchange::binance::parse` does it: `m` (the buyer is the maker) means the taker sold.
fn binance_side(buyer_is_maker: bool) -> TakerSide {
    if buyer_is_maker {
        TakerSide::Sell
    } else {
        TakerSide::Buy
    }
}

/// The fields of either Binance entry, by meaning.
struct BinanceFields<'a> {
    id: Option<u64>,
    price: Option<&'a str>,
    quantity: Option<&'a str>,
    time: Option<i64>,
    buyer_is_maker: Option<bool>,
}

fn binance_entry(raw: &str, instrument: &Instrument, received: Timestamp, f: BinanceFields<'_>) -> Entry {
    let event_time = f.time.and_then(|t| Timestamp::from_millis(t).ok());
    let trade = (|| {
        exchange::trade(
            instrument.clone(),
            required("id", f.id)?,
            exchange::decimal("price", required("price", f.price)?)?,
            exchange::decimal("qty", required("qty", f.quantity)?)?,
            binance_side(required("isBuyerMaker", f.buyer_is_maker)?),
            Timestamp::from_millis(required("time", f.time)?).map_err(|e| exchange::field("time", e))?,
            received,
        )
    })();
    Entry { id: f.id, time: event_time, trade, raw: raw.to_owned() }
}

fn binance_trade(raw: &str, instrument: &Instrument, received: Timestamp) -> Entry {
    match serde_json::from_str::<BinanceTrade<'_>>(raw) {
        Ok(t) => binance_entry(
            raw,
            instrument,
            received,
            BinanceFields { id: t.id, price: t.price, quantity: t.qty, time: t.time, buyer_is_maker: t.is_buyer_maker },
        ),
        Err(e) => Entry::refused(raw, ParseError::Json(e.to_string())),
    }
}

fn binance_agg_trade(raw: &str, instrument: &Instrument, received: Timestamp) -> Entry {
    match serde_json::from_str::<BinanceAggTrade<'_>>(raw) {
        Ok(t) => binance_entry(
            raw,
            instrument,
            received,
            BinanceFields { id: t.a, price: t.p, quantity: t.q, time: t.time, buyer_is_maker: t.m },
        ),
        Err(e) => Entry::refused(raw, ParseError::Json(e.to_string())),
    }
}

/// `GET /products/<id>/trades` entry:
/// `{"time":"2014-11-07T22:19:28.578544Z","trade_id":74,"price":"10.00000000","size":"0.01000000","side":"buy"}`.
#[derive(Deserialize)]
struct CoinbaseTrade<'a> {
    trade_id: Option<u64>,
    time: Option<&'a str>,
    price: Option<&'a str>,
    size: Option<&'a str>,
    side: Option<&'a str>,
}

#[derive(Deserialize)]
struct CoinbaseBounds<'a> {
    trade_id: u64,
    time: &'a str,
}

fn coinbase_trade(raw: &str, instrument: &Instrument, received: Timestamp) -> Entry {
    let t: CoinbaseTrade<'_> = match serde_json::from_str(raw) {
        Ok(t) => t,
        Err(e) => return Entry::refused(raw, ParseError::Json(e.to_string())),
    };
    let trade = (|| {
        exchange::trade(
            instrument.clone(),
            required("trade_id", t.trade_id)?,
            exchange::decimal("price", required("price", t.price)?)?,
            exchange::decimal("size", required("size", t.size)?)?,
            // The maker's side, as in the `matches` channel.
            coinbase::taker_from_maker(required("side", t.side)?)?,
            coinbase::time(required("time", t.time)?)?,
            received,
        )
    })();
    Entry { id: t.trade_id, time: t.time.and_then(|t| Timestamp::parse_rfc3339(t).ok()), trade, raw: raw.to_owned() }
}

/// `{"error":[],"result":{"XXBTZUSD":[["30243.40000","0.34507674",1688669597.8277369,"b","m","",61010979]],"last":"1688669597827736900"}}`.
#[derive(Deserialize)]
struct KrakenAnswer<'a> {
    #[serde(borrow)]
    result: std::collections::HashMap<&'a str, &'a RawValue>,
}

fn kraken_entries(body: &[u8], instrument: &Instrument, received: Timestamp) -> Result<Vec<Entry>, ParseError> {
    let answer: KrakenAnswer<'_> = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    // The trades are under Kraken's own pair name (XXBTZUSD for XBTUSD), beside `last`.
    let rows = answer.result.iter().find(|(k, _)| **k != "last").map(|(_, v)| *v).ok_or_else(|| exchange::field("result", "no trades"))?;
    let rows: Vec<&RawValue> = serde_json::from_str(rows.get()).map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(rows.iter().map(|row| kraken_trade(row.get(), instrument, received)).collect())
}

/// `[price, volume, time, side, order type, misc, trade id]`: price and volume strings padded to
/// the pair's decimals, time in seconds as a JSON number, side the taker's (`b`/`s`).
fn kraken_trade(raw: &str, instrument: &Instrument, received: Timestamp) -> Entry {
    let fields: Vec<&RawValue> = match serde_json::from_str(raw) {
        Ok(f) => f,
        Err(e) => return Entry::refused(raw, ParseError::Json(e.to_string())),
    };
    let text = |index: usize, name: &'static str| -> Result<&str, ParseError> {
        let value = fields.get(index).ok_or_else(|| exchange::field(name, "missing"))?;
        serde_json::from_str::<&str>(value.get()).map_err(|_| exchange::field(name, format!("{} is not a string", value.get())))
    };
    let id = fields.get(6).and_then(|v| v.get().parse::<u64>().ok());
    // The time's digits as sent, never through f64 (as v1's "seconds.micros" strings are read).
    let time = fields.get(2).ok_or_else(|| exchange::field("time", "missing")).and_then(|v| {
        let micros = kraken::seconds_to_micros(v.get().trim_matches('"'))?;
        Timestamp::from_micros(micros).map_err(|e| exchange::field("time", e))
    });
    let trade = (|| {
        exchange::trade(
            instrument.clone(),
            id.ok_or_else(|| exchange::field("trade_id", format!("missing or not an integer: {:?}", fields.get(6).map(|v| v.get()))))?,
            like_a_json_number("price", text(0, "price")?)?,
            like_a_json_number("volume", text(1, "volume")?)?,
            kraken::taker(text(3, "side")?)?,
            time.clone()?,
            received,
        )
    })();
    Entry { id, time: time.ok(), trade, raw: raw.to_owned() }
}

/// Kraken's REST pads prices and volumes with zeros to the pair's decimals (`"0.51170"`,
/// `"40.00000000"`); WebSocket v2 sends the same values as JSON numbers in their shortest form
/// with at least one decimal (`0.5117`, `40.0`), which the live parser keeps digit for digit.
/// Trailing zeros come off down to one decimal so that the same trade has the same decimals
/// either way.
fn like_a_json_number(name: &'static str, text: &str) -> Result<wick_core::Decimal, ParseError> {
    let value = exchange::decimal(name, text)?;
    if value.scale() == 0 {
        return Ok(value);
    }
    let short = value.normalized();
    Ok(if short.scale() == 0 { short.rescaled(1).unwrap_or(short) } else { short })
}

/// Why one request failed; all but `Refused` are retried.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("rate limited by {url}: {what}")]
    RateLimited { url: String, what: String, retry_after: Option<Duration> },
    #[error("IP banned (HTTP 418) by {url}")]
    Banned { url: String, retry_after: Option<Duration> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Refused(String),
}

impl FetchError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::RateLimited { retry_after, .. } | FetchError::Banned { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// How an exchange reports errors inside a successful HTTP answer.
type BodyCheck = fn(&str, &[u8]) -> Result<(), FetchError>;

fn no_errors(_: &str, _: &[u8]) -> Result<(), FetchError> {
    Ok(())
}

/// Kraken answers HTTP 200 with `{"error":["EGeneral:Too many requests"]}` when rate limited.
fn kraken_errors(url: &str, body: &[u8]) -> Result<(), FetchError> {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        error: Vec<String>,
    }
    let Ok(Errors { error }) = serde_json::from_slice::<Errors>(body) else { return Ok(()) };
    let Some(first) = error.first() else { return Ok(()) };
    let what = error.join(", ");
    Err(if first.starts_with("EAPI:Rate limit") || first.starts_with("EGeneral:Too many requests") || first.contains("Temporary lockout") {
        FetchError::RateLimited { url: url.to_owned(), what, retry_after: None }
    } else if first.starts_with("EService:") {
        FetchError::Unavailable(format!("GET {url}: {what}"))
    } else {
        FetchError::Refused(format!("GET {url}: {what}"))
    })
}

/// `Retry-After` in seconds (the form Binance, Coinbase and Kraken send).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Binance's request weight used this minute by this address, as its answers report it.
fn used_weight(headers: &reqwest::header::HeaderMap) -> Option<u32> {
    headers.get("x-mbx-used-weight-1m")?.to_str().ok()?.trim().parse().ok()
}

/// A second's worth of requests at once: a minute's budget in one burst, then the steady rate,
/// would ask for twice the budget in the first minute.
fn burst(per_minute: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new(per_minute.get() / 60).unwrap_or(NonZeroU32::MIN)
}

/// Until the next minute of the wall clock: Binance counts weight per minute.
fn until_next_minute(now: SystemTime) -> Duration {
    let into = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() % 60_000).unwrap_or(0);
    Duration::from_millis((60_000 - into) as u64)
}

/// The HTTP side: one client, one rate limiter, one retry policy.
struct Fetcher {
    http: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    backoff: ExponentialBuilder,
    max_retries: usize,
    /// Binance reported most of the minute's weight used: wait for the next minute first.
    pause: Option<Duration>,
    counters: HistoryCounters,
}

impl Fetcher {
    fn new(settings: &HistorySettings) -> Result<Fetcher> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("wick-feed-publisher/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Fetcher {
            http,
            limiter: RateLimiter::direct(Quota::per_minute(settings.requests_per_minute).allow_burst(burst(settings.requests_per_minute))),
            backoff: ExponentialBuilder::default()
                .with_min_delay(settings.min_backoff)
                .with_max_delay(settings.max_backoff)
                .with_max_times(settings.max_retries)
                .with_jitter(),
            max_retries: settings.max_retries,
            pause: None,
            counters: HistoryCounters::default(),
        })
    }

    /// One attempt: waits for the rate limiter, then classifies the answer. Returns the body and
    /// Binance's used weight.
    async fn attempt(&self, url: &str, check: BodyCheck) -> Result<(Vec<u8>, Option<u32>), FetchError> {
        self.limiter.until_ready().await;
        let response = self.http.get(url).send().await.map_err(|e| FetchError::Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        let weight = used_weight(response.headers());
        if status.is_success() {
            let body = response.bytes().await.map_err(|e| FetchError::Unavailable(format!("GET {url}: reading the body: {e}")))?;
            check(url, &body)?;
            return Ok((body.to_vec(), weight));
        }
        let wait = retry_after(response.headers());
        let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
        Err(match status.as_u16() {
            429 => FetchError::RateLimited { url: url.to_owned(), what: "HTTP 429".into(), retry_after: wait },
            418 => FetchError::Banned { url: url.to_owned(), retry_after: wait },
            500..=599 => FetchError::Unavailable(format!("GET {url}: HTTP {status}: {body}")),
            _ => FetchError::Refused(format!("GET {url}: HTTP {status}: {body}")),
        })
    }

    /// GET with retries; rate-limit answers wait their `Retry-After` (at least the back-off).
    async fn get(&mut self, url: &str, check: BodyCheck) -> Result<Vec<u8>> {
        if let Some(pause) = self.pause.take() {
            tracing::warn!(?pause, "Binance reports most of this minute's request weight used; waiting for the next minute");
            self.counters.weight_waits += 1;
            tokio::time::sleep(pause).await;
        }
        let this = &*self;
        let (mut attempts, mut rate_limited, mut banned, mut retried) = (0u64, 0u64, 0u64, 0u64);
        let outcome = (|| {
            attempts += 1;
            this.attempt(url, check)
        })
        .retry(this.backoff)
        .when(|e| !matches!(e, FetchError::Refused(_)))
        .adjust(|e, backoff| backoff.map(|b| e.retry_after().map_or(b, |wait| wait.max(b))))
        .notify(|e, wait| {
            retried += 1;
            match e {
                FetchError::RateLimited { .. } => rate_limited += 1,
                FetchError::Banned { .. } => {
                    banned += 1;
                    tracing::error!(error = %e, wait = ?wait, "the exchange banned this IP address for exceeding its rate limits; waiting");
                }
                _ => {}
            }
            tracing::warn!(error = %e, wait = ?wait, "request failed; retrying");
        })
        .await;
        self.counters.requests += attempts;
        self.counters.retried += retried;
        self.counters.rate_limited += rate_limited;
        self.counters.banned += banned;
        match outcome {
            Ok((body, weight)) => {
                if weight.is_some_and(|w| w >= BINANCE_WEIGHT_CEILING) {
                    self.pause = Some(until_next_minute(SystemTime::now()));
                }
                Ok(body)
            }
            Err(e @ FetchError::Refused(_)) => Err(anyhow::Error::new(e).context("the exchange refused the request")),
            Err(e) => Err(anyhow::Error::new(e).context(format!("giving up after {} retries", self.max_retries))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{binance, FeedMessage};

    fn live(feed_message: Result<FeedMessage, ParseError>) -> Vec<Trade> {
        match feed_message.unwrap() {
            FeedMessage::Trades(t) => t,
            other => panic!("expected trades, got {other:?}"),
        }
    }

    fn instrument(exchange: Exchange, symbol: &str) -> Instrument {
        exchange::instrument_for(exchange, symbol).unwrap()
    }

    #[test]
    fn a_historical_trade_is_normalized_like_the_live_trade_feed() {
        let rest =
            r#"{"id":12345,"price":"0.001","qty":"100","quoteQty":"0.1","time":1672515782136,"isBuyerMaker":true,"isBestMatch":true}"#;
        let from_rest = binance_trade(rest, &instrument(Exchange::Binance, "BNBBTC"), Timestamp::MIN).trade.unwrap();
        let message = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;
        assert_eq!(live(binance::parse(message, Timestamp::MIN, false)), vec![from_rest]);
    }

    #[test]
    fn an_agg_trade_is_normalized_like_the_live_agg_trade_feed() {
        let rest = r#"{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":false,"M":true}"#;
        let from_rest = binance_agg_trade(rest, &instrument(Exchange::Binance, "BNBBTC"), Timestamp::MIN).trade.unwrap();
        let message = r#"{"e":"aggTrade","E":1498793709153,"s":"BNBBTC","a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":false,"M":true}"#;
        assert_eq!(live(binance::parse(message, Timestamp::MIN, false)), vec![from_rest.clone()]);
        assert_eq!(from_rest.side(), TakerSide::Buy);
    }

    #[test]
    fn a_coinbase_product_trade_is_normalized_like_the_live_match() {
        // `side` is the maker's in both: a maker sell means the taker bought.
        let rest = r#"{"time":"2014-11-07T08:19:27.028459Z","trade_id":10,"price":"400.23","size":"5.23512","side":"sell"}"#;
        let from_rest = coinbase_trade(rest, &instrument(Exchange::Coinbase, "BTC-USD"), Timestamp::MIN).trade.unwrap();
        let message = r#"{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}"#;
        assert_eq!(live(coinbase::parse(message, Timestamp::MIN)), vec![from_rest.clone()]);
        assert_eq!(from_rest.side(), TakerSide::Buy);
    }

    #[test]
    fn a_kraken_rest_trade_is_normalized_like_the_live_v2_trade() {
        // Kraken's documented v2 example; REST pads the same values to the pair's decimals and
        // sends the time as a number of seconds.
        let rest = r#"["0.51170","40.00000000",1695628177.708706,"s","m","",4665906]"#;
        let from_rest = kraken_trade(rest, &instrument(Exchange::Kraken, "MATIC/USD"), Timestamp::MIN).trade.unwrap();
        let message = r#"{"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell","price":0.5117,"qty":40.0,"ord_type":"market","trade_id":4665906,"timestamp":"2023-09-25T07:49:37.708706Z"}]}"#;
        assert_eq!(live(kraken::parse(message, Timestamp::MIN)), vec![from_rest.clone()]);
        assert_eq!((from_rest.price().to_string(), from_rest.quantity().to_string()), ("0.5117".into(), "40.0".into()));
        // A time with more digits than microseconds is cut, not rounded through f64:
        // 1688669597.8277369 as f64 is 1688669597.8277369 ± 2e-7.
        let rest = r#"["30243.40000","0.34507674",1688669597.8277369,"b","m","",61010979]"#;
        let t = kraken_trade(rest, &instrument(Exchange::Kraken, "BTC/USD"), Timestamp::MIN).trade.unwrap();
        assert_eq!((t.event_time().as_micros(), t.trade_id(), t.side()), (1_688_669_597_827_736, 61_010_979, TakerSide::Buy));
        assert_eq!(t.price().to_string(), "30243.4");
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason_and_keep_their_place() {
        let i = instrument(Exchange::Kraken, "BTC/USD");
        let no_id = kraken_trade(r#"["30243.4","0.3",1688669597.8,"b","m",""]"#, &i, Timestamp::MIN);
        assert!(no_id.trade.unwrap_err().to_string().starts_with("trade_id: missing"));
        let bad_side = kraken_trade(r#"["30243.4","0.3",1688669597.8,"x","m","",7]"#, &i, Timestamp::MIN);
        assert_eq!((bad_side.id, bad_side.trade.unwrap_err().to_string()), (Some(7), "side: \"x\" is not buy or sell".to_owned()));
        let i = instrument(Exchange::Binance, "BTCUSDT");
        let entries = [
            "{\"id\":5,\"price\":\"1\",\"qty\":\"0\",\"time\":1,\"isBuyerMaker\":true}",
            "[]",
            "{\"id\":7,\"price\":\"1\",\"qty\":\"2\",\"time\":2,\"isBuyerMaker\":false}",
        ]
        .iter()
        .map(|e| binance_trade(e, &i, Timestamp::MIN))
        .collect();
        let (page, _) = assemble(Feed::BinanceTrade, Position { next_id: 5, since: Timestamp::MIN }, None, None, entries);
        let rejected: Vec<&Rejected> = page.entries.iter().filter_map(|e| e.as_ref().err()).collect();
        assert_eq!(page.entries.len(), 3);
        assert!(rejected[0].reason.contains("quantity 0 is not positive"), "{rejected:?}");
        assert_eq!(rejected[0].at.map(|m| m.id), Some(5));
        assert_eq!((rejected[1].raw.as_slice(), rejected[1].at), (b"[]".as_slice(), None));
        assert_eq!(page.entries[2].as_ref().map(Trade::trade_id), Ok(7));
        assert_eq!(page.last.map(|m| m.id), Some(7));
        assert_eq!(page.next.next_id, 8);
        assert!(page.newest);
    }

    #[test]
    fn coinbase_pages_keep_the_ids_asked_for_and_know_the_newest() {
        let i = instrument(Exchange::Coinbase, "BTC-USD");
        let entry = |id: u64| {
            coinbase_trade(
                &format!(r#"{{"time":"2024-05-01T00:00:00Z","trade_id":{id},"price":"1","size":"1","side":"buy"}}"#),
                &i,
                Timestamp::MIN,
            )
        };
        // Asked for ids 100..1099 (after=1100): the server had only up to 1050, and older ones.
        let entries: Vec<Entry> = (51..=1050).map(entry).collect();
        let (page, _) = assemble(Feed::CoinbaseExchange, Position { next_id: 100, since: Timestamp::MIN }, Some(1100), None, entries);
        let ids: Vec<u64> = page.entries.iter().map(|e| e.as_ref().unwrap().trade_id()).collect();
        assert_eq!(ids, (100..=1050).collect::<Vec<_>>());
        assert!(page.newest);
        // A full page up to 1099: more may follow.
        let (page, _) = assemble(
            Feed::CoinbaseExchange,
            Position { next_id: 100, since: Timestamp::MIN },
            Some(1100),
            None,
            (100..1100).map(entry).collect(),
        );
        assert!(!page.newest);
        assert_eq!(page.next.next_id, 1100);
    }

    #[test]
    fn kraken_pairs_since_and_rate_limit_errors() {
        assert_eq!(kraken_pair("BTC/USD"), "XBTUSD");
        assert_eq!(kraken_pair("eth/btc"), "ETHXBT");
        assert_eq!(kraken_since(Timestamp::from_micros(1_688_669_597_827_736).unwrap()), 1_688_669_597_827_735_999);
        assert_eq!(kraken_since(Timestamp::MIN), 0);
        let url = "http://x/0/public/Trades";
        assert!(matches!(kraken_errors(url, br#"{"error":["EGeneral:Too many requests"]}"#), Err(FetchError::RateLimited { .. })));
        assert!(matches!(kraken_errors(url, br#"{"error":["EAPI:Rate limit exceeded"]}"#), Err(FetchError::RateLimited { .. })));
        assert!(matches!(kraken_errors(url, br#"{"error":["EService:Unavailable"]}"#), Err(FetchError::Unavailable(_))));
        let refused = kraken_errors(url, br#"{"error":["EQuery:Unknown asset pair"]}"#).unwrap_err();
        assert!(matches!(&refused, FetchError::Refused(m) if m.contains("EQuery:Unknown asset pair")), "{refused}");
        assert!(kraken_errors(url, br#"{"error":[],"result":{}}"#).is_ok());
    }

    #[test]
    fn defaults_stay_within_the_documented_limits() {
        let binance = HistorySettings::defaults(Exchange::Binance);
        assert_eq!(binance.base_url, BINANCE_URL);
        assert!(binance.requests_per_minute.get() * BINANCE_HISTORICAL_TRADES_WEIGHT <= BINANCE_WEIGHT_PER_MINUTE);
        let agg = HistorySettings::for_feed(Feed::BinanceAggTrade).requests_per_minute.get();
        assert!(agg * BINANCE_AGG_TRADES_WEIGHT <= BINANCE_WEIGHT_PER_MINUTE && agg > binance.requests_per_minute.get());
        assert!(HistorySettings::defaults(Exchange::Coinbase).requests_per_minute.get() <= 600);
        assert!(HistorySettings::defaults(Exchange::Kraken).requests_per_minute.get() <= 60);
    }

    #[test]
    fn the_limiter_bursts_a_second_of_requests_at_most() {
        let per_minute = |n| NonZeroU32::new(n).unwrap();
        assert_eq!(burst(per_minute(1500)).get(), 25);
        assert_eq!(burst(per_minute(30)).get(), 1);
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(120_000 + 45_500);
        assert_eq!(until_next_minute(at), Duration::from_millis(14_500));
    }

    #[tokio::test]
    async fn unsupported_feeds_say_so() {
        let mut history = History::new(Feed::KrakenV1, HistorySettings::defaults(Exchange::Kraken)).unwrap();
        let mark = Mark { id: 1, time: Timestamp::MIN };
        let error = history.between("BTC/USD", mark, None, Timestamp::MIN).await.unwrap_err().to_string();
        assert!(error.contains("KrakenV1") && error.contains("no exchange ids"), "{error}");
        assert!(!History::supports(Feed::CoinbaseAdvanced) && History::supports(Feed::BinanceTrade));
    }
}
