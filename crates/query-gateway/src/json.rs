//! Candles as JSON text: decimals as strings, times as epoch ms, every model field. Written
//! directly (no intermediate values): a REST answer is mostly this.

use std::fmt::Write as _;

use wick_core::{Candle, Timestamp};

use crate::query::Page;

/// A `/api/v1/candles` answer: `{"candles":[...],"next_start":<epoch ms or null>}`.
pub fn page(page: &Page) -> String {
    let mut s = String::with_capacity(48 + page.candles.len() * 420);
    s.push_str(r#"{"candles":["#);
    for (i, c) in page.candles.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_candle(&mut s, c);
    }
    write_page_end(&mut s, page.next_start);
    s
}

/// Closes a page whose candle array is open: `],"next_start":...}`.
pub fn write_page_end(s: &mut String, next_start: Option<Timestamp>) {
    match next_start {
        Some(t) => {
            let _ = write!(s, r#"],"next_start":{}}}"#, t.as_millis());
        }
        None => s.push_str(r#"],"next_start":null}"#),
    }
}

/// A candle as a JSON object.
pub fn candle(c: &Candle) -> String {
    let mut s = String::with_capacity(400);
    write_candle(&mut s, c);
    s
}

/// Appends a candle as a JSON object. Instrument and interval names are validated on the way in
/// and never need escaping.
pub fn write_candle(s: &mut String, c: &Candle) {
    let ids = c.first_trade().zip(c.last_trade()).filter(|_| c.trade_count() > 0);
    let _ = write!(
        s,
        r#"{{"instrument":"{}","interval":"{}","open_time":{},"close_time":{},"open":"{}","high":"{}","low":"{}","close":"{}","volume":"{}","quote_volume":"{}","taker_buy_volume":"{}","taker_buy_quote_volume":"{}","#,
        c.instrument(),
        c.interval(),
        c.open_time().as_millis(),
        c.close_time().as_millis(),
        c.open(),
        c.high(),
        c.low(),
        c.close(),
        c.volume(),
        c.quote_volume(),
        c.taker_buy_volume(),
        c.taker_buy_quote_volume()
    );
    match c.vwap() {
        Some(v) => {
            let _ = write!(s, r#""vwap":"{v}","#);
        }
        None => s.push_str(r#""vwap":null,"#),
    }
    match ids {
        Some((first, last)) => {
            let _ =
                write!(s, r#""trade_count":{},"first_trade_id":{},"last_trade_id":{},"#, c.trade_count(), first.trade_id, last.trade_id);
        }
        None => {
            let _ = write!(s, r#""trade_count":{},"first_trade_id":null,"last_trade_id":null,"#, c.trade_count());
        }
    }
    let _ = write!(s, r#""closed":{},"version":{}}}"#, c.is_closed(), c.version());
}
