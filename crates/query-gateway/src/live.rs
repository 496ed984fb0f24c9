//! Live candles: a reader per partition of `candles-completed` feeds the read path (so L1 stays
//! current) and the [`Hub`], which fans each event out to the WebSocket and gRPC clients
//! subscribed to its (instrument, interval).
//!
//! Readers start where the writer's stored offsets are (the candles after them are not in the
//! database or L2 yet, so the read path must hold them), and push to clients only from the log
//! end at start. Each client has a bounded queue: a client that falls `live.client_buffer`
//! messages behind is disconnected with a reason, never buffered without bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::Client;
use tokio::sync::{mpsc, Notify};
use wick_core::{Candle, Clock, Instrument, Interval};
use wick_service::backoff::Backoff;
use wick_service::shutdown::Shutdown;
use wick_wire::CandleEventKind;

use crate::metrics::Metrics;
use crate::read::ReadPath;

pub type Series = (Instrument, Interval);

/// One candle event, rendered to JSON at most once however many clients get it.
#[derive(Debug)]
pub struct Pushed {
    pub kind: CandleEventKind,
    pub candle: Candle,
    json: OnceLock<String>,
    /// When the fetch that read it returned (the latency budget's `fetch_to_send`).
    pub fetched: std::time::Instant,
}

impl Pushed {
    pub fn new(kind: CandleEventKind, candle: Candle) -> Pushed {
        Pushed::fetched_at(kind, candle, std::time::Instant::now())
    }

    pub fn fetched_at(kind: CandleEventKind, candle: Candle, fetched: std::time::Instant) -> Pushed {
        Pushed { kind, candle, json: OnceLock::new(), fetched }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            CandleEventKind::Update => "update",
            CandleEventKind::Final => "final",
            CandleEventKind::Revision => "revision",
        }
    }

    /// `{"type":"candle","kind":...,"candle":{...}}`.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| format!(r#"{{"type":"candle","kind":"{}","candle":{}}}"#, self.kind_name(), crate::json::candle(&self.candle)))
    }
}

#[derive(Debug)]
struct ClientEntry {
    id: u64,
    tx: mpsc::Sender<Arc<Pushed>>,
    state: Arc<ClientState>,
}

/// Why a client was dropped, once it was.
#[derive(Debug, Default)]
pub struct ClientState {
    lagged: AtomicBool,
    notify: Notify,
}

impl ClientState {
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::SeqCst)
    }
    pub async fn dropped(&self) {
        self.notify.notified().await;
    }
}

/// Subscriptions and fan-out.
#[derive(Debug)]
pub struct Hub {
    series: RwLock<HashMap<Series, Vec<ClientEntry>>>,
    next_id: AtomicU64,
    buffer: usize,
    max_subscriptions: usize,
    metrics: Metrics,
}

/// One client's subscriptions and queue.
#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    hub: Arc<Hub>,
    tx: mpsc::Sender<Arc<Pushed>>,
    pub rx: mpsc::Receiver<Arc<Pushed>>,
    pub state: Arc<ClientState>,
    pairs: HashSet<Series>,
}

impl Hub {
    pub fn new(buffer: usize, max_subscriptions: usize, metrics: Metrics) -> Arc<Hub> {
        Arc::new(Hub { series: RwLock::new(HashMap::new()), next_id: AtomicU64::new(1), buffer, max_subscriptions, metrics })
    }

    pub fn subscriber(self: &Arc<Hub>) -> Subscriber {
        let (tx, rx) = mpsc::channel(self.buffer);
        Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            hub: self.clone(),
            tx,
            rx,
            state: Arc::new(ClientState::default()),
            pairs: HashSet::new(),
        }
    }

    /// Delivers an event to every subscriber of its series; drops subscribers that are full.
    pub fn publish(&self, event: Arc<Pushed>) {
        let key = (event.candle.instrument().clone(), event.candle.interval());
        let mut lagging = Vec::new();
        {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            let Some(clients) = series.get(&key) else { return };
            for c in clients {
                if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(event.clone()) {
                    lagging.push((c.id, c.state.clone()));
                }
            }
        }
        for (id, state) in lagging {
            if !state.lagged.swap(true, Ordering::SeqCst) {
                self.metrics.clients_dropped.with_label_values(&["slow_consumer"]).inc();
                state.notify.notify_one();
            }
            self.remove_client(id);
        }
    }

    fn remove_client(&self, id: u64) {
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        series.retain(|_, clients| {
            clients.retain(|c| c.id != id);
            !clients.is_empty()
        });
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at most {0} subscriptions per connection")]
pub struct TooManySubscriptions(pub usize);

impl Subscriber {
    /// Adds a subscription; `Ok(false)` when it was already there.
    pub fn subscribe(&mut self, series: Series) -> Result<bool, TooManySubscriptions> {
        if self.pairs.contains(&series) {
            return Ok(false);
        }
        if self.pairs.len() >= self.hub.max_subscriptions {
            return Err(TooManySubscriptions(self.hub.max_subscriptions));
        }
        let entry = ClientEntry { id: self.id, tx: self.tx.clone(), state: self.state.clone() };
        self.hub.series.write().unwrap_or_else(|e| e.into_inner()).entry(series.clone()).or_default().push(entry);
        self.pairs.insert(series);
        Ok(true)
    }

    /// Removes a subscription; `false` when there was none.
    pub fn unsubscribe(&mut self, series: &Series) -> bool {
        if !self.pairs.remove(series) {
            return false;
        }
        let mut all = self.hub.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(clients) = all.get_mut(series) {
            clients.retain(|c| c.id != self.id);
            if clients.is_empty() {
                all.remove(series);
            }
        }
        true
    }

    pub fn buffer(&self) -> usize {
        self.hub.buffer
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.remove_client(self.id);
    }
}

/// Reads every partition of the candles topic until shutdown.
pub struct Consumer {
    pub client: Arc<Client>,
    pub topic: String,
    pub partitions: i32,
    pub fetch_max_wait: Duration,
    pub fetch_max_bytes: i32,
    pub read: Arc<ReadPath>,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("topic", &self.topic).field("partitions", &self.partitions).finish()
    }
}

impl Consumer {
    /// Starts one reader per partition, from `stored` (the writer's offsets: what the database
    /// and L2 already hold) or the earliest offset where the writer stored nothing; `stored` is
    /// `None` when the database could not tell: then every partition is read from its earliest
    /// offset, so that no candle the writer may not have stored is missed (the prune task drops
    /// what it did store once the database answers). Pushes start at the log end either way.
    pub async fn start(self: Arc<Self>, stored: Option<HashMap<i32, i64>>, shutdown: Shutdown) -> Result<Vec<tokio::task::JoinHandle<()>>> {
        let lags: Arc<Vec<AtomicI64>> = Arc::new((0..self.partitions).map(|_| AtomicI64::new(0)).collect());
        let mut tasks = Vec::new();
        for partition in 0..self.partitions {
            let client = self
                .client
                .partition_client(self.topic.clone(), partition, UnknownTopicHandling::Retry)
                .await
                .with_context(|| format!("{}/{partition}", self.topic))?;
            let end = client.get_offset(OffsetAt::Latest).await.with_context(|| format!("log end of {}/{partition}", self.topic))?;
            let start = match &stored {
                None => client.get_offset(OffsetAt::Earliest).await.context("earliest offset")?,
                Some(offsets) => match offsets.get(&partition) {
                    Some(o) => (*o).min(end),
                    None => client.get_offset(OffsetAt::Earliest).await.context("earliest offset")?,
                },
            };
            tracing::info!(partition, start, push_from = end, "reading candles-completed");
            let this = self.clone();
            let shutdown = shutdown.clone();
            let lags = lags.clone();
            tasks.push(tokio::spawn(async move {
                this.read_partition(client, partition, start, end, &lags, shutdown).await;
            }));
        }
        Ok(tasks)
    }

    async fn read_partition(
        &self,
        client: rskafka::client::partition::PartitionClient,
        partition: i32,
        mut offset: i64,
        push_from: i64,
        lags: &[AtomicI64],
        shutdown: Shutdown,
    ) {
        let max_wait = i32::try_from(self.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let publish_to_fetch = self.metrics.hop_seconds.with_label_values(&["publish_to_fetch"]);
        loop {
            let fetched = tokio::select! {
                r = client.fetch_records(offset, 1..self.fetch_max_bytes, max_wait) => r,
                _ = shutdown.requested() => return,
            };
            let (records, high_watermark) = match fetched {
                Ok(f) => f,
                Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
                    match client.get_offset(OffsetAt::Earliest).await {
                        Ok(earliest) => offset = earliest,
                        Err(e) => tracing::warn!(partition, error = %e, "earliest offset"),
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "fetch from candles-completed failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.delay()) => {}
                        _ = shutdown.requested() => return,
                    }
                    continue;
                }
            };
            backoff.reset();
            let fetched = std::time::Instant::now();
            let now_us = wick_core::SystemClock.now().as_micros();
            let mut events = 0;
            for r in records {
                if r.offset < offset {
                    continue;
                }
                offset = r.offset + 1;
                publish_to_fetch.observe((now_us - r.record.timestamp.timestamp_micros()).max(0) as f64 / 1e6);
                let raw = r.record.value.unwrap_or_default();
                let content_type = r.record.headers.get(wick_wire::CONTENT_TYPE_HEADER).map(Vec::as_slice);
                match wick_wire::decode_candle_record(content_type, &raw) {
                    Ok(parts) => {
                        for part in parts {
                            let batch = match part {
                                Ok((_, batch)) => batch,
                                Err(refused) => {
                                    self.metrics.dead_letters.inc();
                                    tracing::debug!(partition, offset = r.offset, error = %refused.error, "skipping a part that is not a candle batch");
                                    continue;
                                }
                            };
                            for (kind, candle) in batch {
                                events += 1;
                                self.read.apply_live(&candle, partition, r.offset);
                                if r.offset >= push_from {
                                    self.hub.publish(Arc::new(Pushed::fetched_at(kind, candle, fetched)));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.metrics.dead_letters.inc();
                        tracing::debug!(partition, offset = r.offset, error = %e, "skipping a record that is not a candle batch");
                    }
                }
            }
            self.metrics.live_events.inc_by(events);
            if let Some(lag) = lags.get(partition as usize) {
                lag.store(wick_kafka::lag(high_watermark, offset), Ordering::Relaxed);
            }
            self.metrics.live_lag.set(lags.iter().map(|l| l.load(Ordering::Relaxed)).sum());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_core::{TakerSide, Timestamp, Trade};

    fn pushed(instrument: &str, minute: i64) -> Arc<Pushed> {
        let i = Instrument::new(instrument).unwrap();
        let at = Timestamp::from_millis(minute * 60_000).unwrap();
        let t = Trade::new(i, 1, "1".parse().unwrap(), "1".parse().unwrap(), TakerSide::Sell, at, at).unwrap();
        Arc::new(Pushed::new(CandleEventKind::Update, Candle::from_trade(Interval::M1, &t).unwrap()))
    }

    #[tokio::test]
    async fn events_reach_subscribers_and_slow_ones_are_dropped() {
        let hub = Hub::new(2, 2, Metrics::new());
        let btc = (Instrument::new("BINANCE:BTC-USDT").unwrap(), Interval::M1);
        let eth = (Instrument::new("BINANCE:ETH-USDT").unwrap(), Interval::M1);
        let mut fast = hub.subscriber();
        let mut slow = hub.subscriber();
        assert_eq!(fast.subscribe(btc.clone()), Ok(true));
        assert_eq!(fast.subscribe(btc.clone()), Ok(false));
        assert_eq!(fast.subscribe(eth.clone()), Ok(true));
        assert_eq!(fast.subscribe((btc.0.clone(), Interval::H1)), Err(TooManySubscriptions(2)));
        slow.subscribe(btc.clone()).unwrap();

        for minute in 0..3 {
            hub.publish(pushed("BINANCE:BTC-USDT", minute));
            let got = fast.rx.recv().await.unwrap();
            assert_eq!(got.candle.open_time().as_millis(), minute * 60_000);
        }
        // The slow client held 2 and could not take the third.
        assert!(slow.state.lagged());
        assert!(!fast.state.lagged());
        hub.publish(pushed("BINANCE:ETH-USDT", 0));
        assert!(fast.rx.recv().await.unwrap().json().contains("\"instrument\":\"BINANCE:ETH-USDT\""));
        assert!(fast.unsubscribe(&eth));
        hub.publish(pushed("BINANCE:ETH-USDT", 1));
        assert!(fast.rx.try_recv().is_err());
    }
}
