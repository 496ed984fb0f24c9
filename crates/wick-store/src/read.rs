//! The read side: candles of one series over a time range, rebuilt through the model's checked
//! constructor, exactly as written (numerics travel as text, which PostgreSQL prints exactly).

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::{GenericClient, Row};
use wick_core::{Candle, CandleParts, Decimal, Instrument, Interval, Timestamp, TradeKey};

use crate::StoreError;

const SELECT: &str = "SELECT open_time, open::text, high::text, low::text, close::text, volume::text, quote_volume::text, \
    taker_buy_volume::text, taker_buy_quote_volume::text, trade_count, first_trade_id::text, last_trade_id::text, \
    first_trade_time, last_trade_time, closed, version FROM candles";

/// The candles of `instrument` and `interval` opening in `[start, end)`, oldest first, at most
/// `limit`.
pub async fn read_candles(
    client: &impl GenericClient,
    instrument: &Instrument,
    interval: Interval,
    start: Timestamp,
    end: Timestamp,
    limit: i64,
) -> Result<Vec<Candle>, StoreError> {
    let rows = client
        .query(
            &format!("{SELECT} WHERE instrument = $1 AND interval = $2 AND open_time >= $3 AND open_time < $4 ORDER BY open_time LIMIT $5"),
            &[&instrument.as_str(), &interval.as_str(), &system_time(start), &system_time(end), &limit],
        )
        .await?;
    rows.iter().map(|r| candle(instrument, interval, r)).collect()
}

/// Every instrument with stored candles.
pub async fn read_instruments(client: &impl GenericClient) -> Result<Vec<String>, StoreError> {
    // A loose index scan: one probe of the primary key per instrument, not a scan of every row.
    let rows = client
        .query(
            "WITH RECURSIVE i AS ( \
               (SELECT instrument FROM candles ORDER BY instrument LIMIT 1) \
               UNION ALL \
               SELECT (SELECT c.instrument FROM candles c WHERE c.instrument > i.instrument ORDER BY c.instrument LIMIT 1) \
               FROM i WHERE i.instrument IS NOT NULL) \
             SELECT instrument FROM i WHERE instrument IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn system_time(t: Timestamp) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(t.as_micros()).unwrap_or(0))
}

fn timestamp(field: &'static str, t: SystemTime) -> Result<Timestamp, StoreError> {
    let micros = t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(-1);
    Timestamp::from_micros(micros).map_err(|e| StoreError::Corrupt { field, reason: e.to_string() })
}

fn candle(instrument: &Instrument, interval: Interval, r: &Row) -> Result<Candle, StoreError> {
    let decimal = |i: usize, field: &'static str| -> Result<Decimal, StoreError> {
        r.get::<_, String>(i).parse().map_err(|e: wick_core::DecimalError| StoreError::Corrupt { field, reason: e.to_string() })
    };
    let id = |i: usize, field: &'static str| -> Result<u64, StoreError> {
        r.get::<_, Option<String>>(i).unwrap_or_default().parse().map_err(|e: std::num::ParseIntError| StoreError::Corrupt { field, reason: e.to_string() })
    };
    let time = |i: usize, field: &'static str| -> Result<Timestamp, StoreError> {
        timestamp(field, r.get::<_, Option<SystemTime>>(i).ok_or(StoreError::Corrupt { field, reason: "missing".into() })?)
    };
    let parts = CandleParts {
        instrument: instrument.clone(),
        interval,
        open_time: timestamp("open_time", r.get(0))?,
        open: decimal(1, "open")?,
        high: decimal(2, "high")?,
        low: decimal(3, "low")?,
        close: decimal(4, "close")?,
        volume: decimal(5, "volume")?,
        quote_volume: decimal(6, "quote_volume")?,
        taker_buy_volume: decimal(7, "taker_buy_volume")?,
        taker_buy_quote_volume: decimal(8, "taker_buy_quote_volume")?,
        trade_count: u64::try_from(r.get::<_, i64>(9)).map_err(|e| StoreError::Corrupt { field: "trade_count", reason: e.to_string() })?,
        first_trade: TradeKey { event_time: time(12, "first_trade_time")?, trade_id: id(10, "first_trade_id")? },
        last_trade: TradeKey { event_time: time(13, "last_trade_time")?, trade_id: id(11, "last_trade_id")? },
        closed: r.get(14),
    };
    let c = Candle::from_parts(parts).map_err(|e| StoreError::Corrupt { field: "candle", reason: e.to_string() })?;
    let version: i64 = r.get(15);
    if i64::try_from(c.version()).ok() != Some(version) {
        return Err(StoreError::Corrupt { field: "version", reason: format!("{version} does not match the candle's {}", c.version()) });
    }
    Ok(c)
}
