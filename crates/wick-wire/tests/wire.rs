//! Round trips through every wire format, and refusals that say what was wrong.

use proptest::prelude::*;
use prost::Message;
use wick_core::{Candle, Decimal, Instrument, Interval, TakerSide, Timestamp, Trade};
use wick_wire::{pb, CandleEventKind, WireError};

fn btc() -> Instrument {
    Instrument::new("BINANCE:BTC-USDT").unwrap()
}

fn trade(id: u64, micros: i64, price: &str, qty: &str, side: TakerSide) -> Trade {
    let t = Timestamp::from_micros(micros).unwrap();
    Trade::new(btc(), id, price.parse().unwrap(), qty.parse().unwrap(), side, t, t).unwrap()
}

proptest! {
    #[test]
    fn decimals_round_trip(coefficient in any::<i128>(), scale in 0u8..=38) {
        let d = Decimal::new(coefficient, scale).unwrap();
        let wire: pb::Decimal = d.into();
        prop_assert_eq!(wick_wire::decimal("x", Some(&wire)).unwrap(), d);
    }

    #[test]
    fn trade_batches_round_trip(raw in prop::collection::vec((1i64..1_000_000_000, 0u8..=8, 1i64..1_000_000, 0u8..=8, 0i64..4_000_000_000_000_000, 0u8..3), 0..50)) {
        let trades: Vec<Trade> = raw.iter().enumerate().map(|(i, (p, ps, q, qs, t, side))| {
            let side = [TakerSide::Buy, TakerSide::Sell, TakerSide::Unknown][usize::from(*side)];
            let time = Timestamp::from_micros(*t).unwrap();
            Trade::new(btc(), i as u64, Decimal::new(i128::from(*p), *ps).unwrap(), Decimal::new(i128::from(*q), *qs).unwrap(), side, time, time).unwrap()
        }).collect();
        let bytes = wick_wire::encode_trade_batch(&btc(), "BTCUSDT", &trades);
        let (instrument, decoded) = wick_wire::decode_trade_batch(&bytes).unwrap();
        prop_assert_eq!(instrument, btc());
        prop_assert_eq!(decoded, trades);
    }
}

#[test]
fn json_trades_round_trip_and_accept_rfc3339() {
    let t = trade(7, 1_790_035_200_250_000, "63250.10", "0.00150", TakerSide::Sell);
    let bytes = wick_wire::encode_json_trade(&t);
    assert_eq!(wick_wire::decode_json_trade(&bytes, Timestamp::MIN).unwrap(), t);
    let plain = br#"{"instrument":"BINANCE:BTC-USDT","trade_id":7,"price":"63250.10","quantity":"0.00150","side":"sell","event_time":"2026-09-22T00:00:00.250Z"}"#;
    let received = Timestamp::from_micros(1_790_035_200_250_000).unwrap();
    assert_eq!(wick_wire::decode_json_trade(plain, received).unwrap(), t);
}

#[test]
fn bad_json_trades_say_what_is_wrong() {
    let now = Timestamp::MIN;
    let cases: [(&[u8], &str); 6] = [
        (br#"{"instrument":"BINANCE:BTC-USDT","trade_id":1,"price":63250.1,"quantity":"1","event_time":1}"#, "price: must be a string"),
        (br#"{"instrument":"BTCUSDT","trade_id":1,"price":"1","quantity":"1","event_time":1}"#, "instrument: invalid instrument"),
        (br#"{"instrument":"BINANCE:BTC-USDT","trade_id":1,"price":"-1","quantity":"1","event_time":1}"#, "price -1 is not positive"),
        (
            br#"{"instrument":"BINANCE:BTC-USDT","trade_id":1,"price":"1","quantity":"1","event_time":"yesterday"}"#,
            "event_time: invalid RFC 3339",
        ),
        (br#"{"instrument":"BINANCE:BTC-USDT","trade_id":1,"price":"1","quantity":"1","side":"up","event_time":1}"#, "side: \"up\""),
        (br#"{"trade_id":1}"#, "missing field `instrument`"),
    ];
    for (bytes, expected) in cases {
        let err = wick_wire::decode_json_trade(bytes, now).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should mention {expected:?}");
    }
}

#[test]
fn bad_batches_name_the_trade() {
    assert!(matches!(wick_wire::decode_trade_batch(b"\xff\xff\xff"), Err(WireError::Protobuf { .. })));
    let mut batch = pb::TradeBatch { instrument: "BINANCE:BTC-USDT".into(), exchange_symbol: String::new(), trades: Vec::new() };
    batch.trades.push(wick_wire::trade_to_wire(&trade(1, 0, "1", "1", TakerSide::Buy), false));
    let mut broken = wick_wire::trade_to_wire(&trade(2, 0, "1", "1", TakerSide::Buy), false);
    broken.quantity = None;
    batch.trades.push(broken);
    let err = wick_wire::decode_trade_batch(&batch.encode_to_vec()).unwrap_err();
    assert_eq!(err.to_string(), "trade 1 of the batch: quantity is missing");
}

#[test]
fn candle_batches_round_trip_and_check_versions() {
    let mut c = Candle::from_trade(Interval::M1, &trade(1, 60_000_000, "100.5", "2", TakerSide::Buy)).unwrap();
    c.apply(&trade(2, 61_000_000, "99", "1", TakerSide::Sell)).unwrap();
    let mut closed = c.clone();
    closed.mark_closed();
    let events = vec![(CandleEventKind::Update, c.clone()), (CandleEventKind::Final, closed)];
    let bytes = wick_wire::encode_candle_batch(&btc(), &events);
    let (instrument, decoded) = wick_wire::decode_candle_batch(&bytes).unwrap();
    assert_eq!((instrument, decoded), (btc(), events));

    let mut wire = wick_wire::candle_to_wire(&c);
    wire.version += 1;
    assert!(wick_wire::candle_from_wire(&wire).unwrap_err().to_string().starts_with("version:"));
    let mut wire = wick_wire::candle_to_wire(&c);
    wire.high = Some(Decimal::new(1, 0).unwrap().into());
    assert!(wick_wire::candle_from_wire(&wire).unwrap_err().to_string().contains("low <= open, close <= high"));
}

fn eth_trade(id: u64) -> Trade {
    let t = Timestamp::from_micros(1_000_000 + id as i64).unwrap();
    Trade::new(Instrument::new("BINANCE:ETH-USDT").unwrap(), id, "2500.5".parse().unwrap(), "0.1".parse().unwrap(), TakerSide::Buy, t, t)
        .unwrap()
}

fn partition_record(batches: Vec<pb::TradeBatch>) -> Vec<u8> {
    pb::TradeBatches { batches }.encode_to_vec()
}

#[test]
fn market_records_of_every_format_decode_to_their_trades() {
    let btc_trades = vec![trade(1, 1_000_000, "100", "1", TakerSide::Buy), trade(2, 1_000_001, "101", "2", TakerSide::Sell)];
    let eth_trades = vec![eth_trade(9)];
    let eth = Instrument::new("BINANCE:ETH-USDT").unwrap();
    let batches = partition_record(vec![
        wick_wire::trade_batch_to_wire(&btc(), "BTCUSDT", &btc_trades),
        wick_wire::trade_batch_to_wire(&eth, "ETHUSDT", &eth_trades),
    ]);
    let ct = Some(wick_wire::CONTENT_TYPE_TRADE_BATCHES.as_bytes());
    let decoded = wick_wire::trades_of_record(ct, &batches, Timestamp::MIN).unwrap();
    assert_eq!(decoded, vec![(btc(), btc_trades.clone()), (eth.clone(), eth_trades.clone())]);

    // The single-instrument format, with its header or none (records written before batches).
    let single = wick_wire::encode_trade_batch(&btc(), "BTCUSDT", &btc_trades);
    for ct in [None, Some(wick_wire::CONTENT_TYPE_PROTOBUF.as_bytes())] {
        assert_eq!(wick_wire::trades_of_record(ct, &single, Timestamp::MIN).unwrap(), vec![(btc(), btc_trades.clone())]);
    }
    // A plain client's JSON trade.
    let json = wick_wire::encode_json_trade(&eth_trades[0]);
    let ct = Some(wick_wire::CONTENT_TYPE_JSON.as_bytes());
    assert_eq!(wick_wire::trades_of_record(ct, &json, Timestamp::MIN).unwrap(), vec![(eth, eth_trades)]);
}

#[test]
fn a_bad_part_of_a_partition_record_is_refused_alone() {
    let good = wick_wire::trade_batch_to_wire(&btc(), "BTCUSDT", &[trade(1, 1_000_000, "100", "1", TakerSide::Buy)]);
    let mut bad_instrument = good.clone();
    bad_instrument.instrument = "not an instrument".into();
    let mut bad_trade = wick_wire::trade_batch_to_wire(&btc(), "BTCUSDT", &[trade(2, 1_000_000, "100", "1", TakerSide::Buy)]);
    bad_trade.trades.push(pb::Trade { price: None, ..bad_trade.trades[0].clone() });
    let record = partition_record(vec![good.clone(), bad_instrument.clone(), bad_trade]);
    let parts = wick_wire::decode_market_record(Some(wick_wire::CONTENT_TYPE_TRADE_BATCHES.as_bytes()), &record, Timestamp::MIN).unwrap();
    assert_eq!(parts.len(), 3);
    let (instrument, trades) = parts[0].as_ref().unwrap();
    assert_eq!((instrument, trades.len()), (&btc(), 1));
    let refused = parts[1].as_ref().unwrap_err();
    assert_eq!(refused.error.reason(), "malformed");
    assert!(refused.error.to_string().contains("instrument"), "{}", refused.error);
    // The refused part travels alone, in the single-instrument format, exactly as it came.
    assert_eq!(pb::TradeBatch::decode(refused.value.as_slice()).unwrap(), bad_instrument);
    let (_, trades) = parts[2].as_ref().unwrap();
    assert!(trades[0].is_ok());
    let refused = trades[1].as_ref().unwrap_err();
    assert_eq!(refused.error.to_string(), "trade 1 of the batch: price is missing");
}

#[test]
fn records_of_unknown_content_types_or_broken_bodies_are_refused_whole() {
    let single = wick_wire::encode_trade_batch(&btc(), "BTCUSDT", &[trade(1, 1_000_000, "100", "1", TakerSide::Buy)]);
    let err = wick_wire::decode_market_record(Some(b"text/csv"), &single, Timestamp::MIN).unwrap_err();
    assert_eq!(err.reason(), "malformed");
    assert!(err.to_string().contains("\"text/csv\" is not one of"), "{err}");
    let err = wick_wire::decode_market_record(Some(wick_wire::CONTENT_TYPE_TRADE_BATCHES.as_bytes()), b"\xff\xff\xff", Timestamp::MIN)
        .unwrap_err();
    assert!(matches!(err, WireError::Protobuf { message: "TradeBatches", .. }), "{err}");
    // JSON is a market-events format only.
    let err = wick_wire::decode_candle_record(Some(wick_wire::CONTENT_TYPE_JSON.as_bytes()), b"{}").unwrap_err();
    assert!(err.to_string().contains("content-type"), "{err}");
}

#[test]
fn candle_records_of_both_formats_decode_and_a_bad_part_stands_alone() {
    let c = Candle::from_trade(Interval::M1, &trade(1, 60_000_000, "100.5", "2", TakerSide::Buy)).unwrap();
    let events = vec![(CandleEventKind::Update, c)];
    let e = Candle::from_trade(Interval::S1, &eth_trade(3)).unwrap();
    let eth = Instrument::new("BINANCE:ETH-USDT").unwrap();
    let eth_events = vec![(CandleEventKind::Final, {
        let mut e = e;
        e.mark_closed();
        e
    })];
    let mut wrong = wick_wire::candle_batch_to_wire(&btc(), &eth_events);
    wrong.instrument = btc().to_string();
    let record = pb::CandleBatches {
        batches: vec![wick_wire::candle_batch_to_wire(&btc(), &events), wrong.clone(), wick_wire::candle_batch_to_wire(&eth, &eth_events)],
    }
    .encode_to_vec();
    let parts = wick_wire::decode_candle_record(Some(wick_wire::CONTENT_TYPE_CANDLE_BATCHES.as_bytes()), &record).unwrap();
    assert_eq!(parts[0].as_ref().unwrap(), &(btc(), events.clone()));
    let refused = parts[1].as_ref().unwrap_err();
    assert!(refused.error.to_string().contains("candle of BINANCE:ETH-USDT in a batch of BINANCE:BTC-USDT"), "{}", refused.error);
    assert_eq!(pb::CandleBatch::decode(refused.value.as_slice()).unwrap(), wrong);
    assert_eq!(parts[2].as_ref().unwrap(), &(eth, eth_events));
    let single = wick_wire::encode_candle_batch(&btc(), &events);
    assert_eq!(wick_wire::candles_of_record(None, &single).unwrap(), vec![(btc(), events)]);
}
