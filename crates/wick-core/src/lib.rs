//! Wick's core: the exact candle model and the lock-free ring that feeds the aggregators.
//!
//! No IO, no async runtime and no wire formats live here: every service and wire crate builds on
//! these types. `unsafe` code is confined to [`ring`].

pub mod candle;
pub mod decimal;
pub mod instrument;
pub mod interval;
pub mod ring;
pub mod series;
pub mod time;
pub mod trade;

pub use candle::{Candle, CandleError, CandleParts, VWAP_SCALE};
pub use decimal::{Decimal, DecimalError};
pub use instrument::{Instrument, InstrumentError};
pub use interval::{Interval, IntervalError, UtcOffset, UtcOffsetError, EARLIEST_EVENT_TIME};
pub use series::{Applied, CandleSeries, Revision, SeriesError, SeriesSnapshot, SnapshotPart};
pub use time::{Clock, ManualClock, SystemClock, Timestamp, TimestampError};
pub use trade::{TakerSide, Trade, TradeError, TradeKey};

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExample;
