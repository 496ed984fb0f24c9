//! The exchanges' documented payloads (recorded in `tests/fixtures/`), parsed into normalized
//! trades: sides, exact decimals, times and ids as each exchange defines them; and refusals of
//! malformed frames and unknown message types.

use feed_publisher::exchange::{binance, coinbase, kraken, FeedMessage, ParseError};
use wick_core::{TakerSide, Timestamp, Trade};

fn lines(name: &str) -> Vec<String> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).lines().map(str::to_owned).collect()
}

fn trades(m: FeedMessage) -> Vec<Trade> {
    match m {
        FeedMessage::Trades(t) => t,
        other => panic!("expected trades, got {other:?}"),
    }
}

/// (instrument, id, price, qty, side, event time in µs)
fn summary(t: &Trade) -> (String, u64, String, String, TakerSide, i64) {
    (t.instrument().to_string(), t.trade_id(), t.price().to_string(), t.quantity().to_string(), t.side(), t.event_time().as_micros())
}

const RECEIVED: Timestamp = Timestamp::MIN;

#[test]
fn binance_trade_aggtrade_and_combined_streams() {
    let l = lines("binance.jsonl");
    assert_eq!(binance::parse(&l[0], RECEIVED, false).unwrap(), FeedMessage::Control("subscription response"));
    let t = trades(binance::parse(&l[1], RECEIVED, false).unwrap());
    // m = true: the buyer was the maker, so the taker sold.
    assert_eq!(summary(&t[0]), ("BINANCE:BNB-BTC".into(), 12345, "0.001".into(), "100".into(), TakerSide::Sell, 1_672_515_782_136_000));
    let t = trades(binance::parse(&l[2], RECEIVED, false).unwrap());
    assert_eq!(t[0].trade_id(), 12345, "aggTrade uses its aggregate id `a`");
    let t = trades(binance::parse(&l[3], RECEIVED, false).unwrap());
    assert_eq!(summary(&t[0]), ("BINANCE:BNB-BTC".into(), 12346, "0.0011".into(), "5.5".into(), TakerSide::Buy, 1_672_515_782_137_000));
    // timeUnit=MICROSECOND streams carry microseconds.
    let t = trades(binance::parse(&l[1].replace("1672515782136", "1672515782136123"), RECEIVED, true).unwrap());
    assert_eq!(t[0].event_time().as_micros(), 1_672_515_782_136_123);
}

#[test]
fn coinbase_matches_heartbeats_and_advanced_trade() {
    let l = lines("coinbase.jsonl");
    assert_eq!(coinbase::parse(&l[0], RECEIVED).unwrap(), FeedMessage::Control("subscriptions"));
    // `side` is the maker's: a maker buy means the taker sold.
    let t = trades(coinbase::parse(&l[1], RECEIVED).unwrap());
    assert_eq!(summary(&t[0]), ("COINBASE:BTC-USD".into(), 9, "400.00".into(), "1.0".into(), TakerSide::Sell, 1_415_348_366_028_459));
    let t = trades(coinbase::parse(&l[2], RECEIVED).unwrap());
    assert_eq!(summary(&t[0]), ("COINBASE:BTC-USD".into(), 10, "400.23".into(), "5.23512".into(), TakerSide::Buy, 1_415_348_367_028_459));
    match coinbase::parse(&l[3], RECEIVED).unwrap() {
        FeedMessage::Heartbeat { instrument, last_trade_id } => assert_eq!((instrument.as_str(), last_trade_id), ("COINBASE:BTC-USD", 20)),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    let t = trades(coinbase::parse(&l[4], RECEIVED).unwrap());
    assert_eq!(summary(&t[0]), ("COINBASE:ETH-USD".into(), 0, "1260.01".into(), "0.3".into(), TakerSide::Sell, 1_565_815_347_265_000));
}

#[test]
fn kraken_v2_numbers_are_exact_and_v1_arrays_parse() {
    let l = lines("kraken.jsonl");
    assert_eq!(kraken::parse(&l[0], RECEIVED).unwrap(), FeedMessage::Control("method response"));
    let t = trades(kraken::parse(&l[1], RECEIVED).unwrap());
    assert_eq!(
        summary(&t[0]),
        ("KRAKEN:MATIC-USD".into(), 4_665_906, "0.5117".into(), "40.0".into(), TakerSide::Sell, 1_695_628_177_708_706)
    );
    let t = trades(kraken::parse(&l[2], RECEIVED).unwrap());
    // The raw text, digit for digit: 105944.20 keeps its trailing zero, 0.00027625 is not rounded.
    assert_eq!(
        summary(&t[0]),
        ("KRAKEN:BTC-USD".into(), 10_218_208, "105944.20".into(), "0.00027625".into(), TakerSide::Buy, 1_696_613_755_440_295)
    );
    assert_eq!(summary(&t[1]).2, "105910.50");
    let t = trades(kraken::parse(&l[3], RECEIVED).unwrap());
    assert_eq!(t.len(), 2);
    assert_eq!(
        summary(&t[0]),
        (
            "KRAKEN:BTC-USD".into(),
            1_534_614_057_321_597_000,
            "5541.20000".into(),
            "0.15850568".into(),
            TakerSide::Sell,
            1_534_614_057_321_597
        )
    );
    assert_eq!((t[1].side(), t[1].trade_id()), (TakerSide::Buy, 1_534_614_057_324_998_001));
    assert_eq!(kraken::parse(&l[4], RECEIVED).unwrap(), FeedMessage::Control("heartbeat or status"));
    // The status frame every connection opens with: its `data` is not trades.
    assert_eq!(kraken::parse(&l[5], RECEIVED).unwrap(), FeedMessage::Control("heartbeat or status"));
}

#[test]
fn malformed_frames_and_unknown_types_are_refused_with_a_reason() {
    assert!(matches!(binance::parse("{\"e\":\"trade\",", RECEIVED, false), Err(ParseError::Json(_))));
    assert_eq!(
        binance::parse(r#"{"e":"depthUpdate","s":"BNBBTC","p":"1","q":"1","T":1,"m":true}"#, RECEIVED, false),
        Err(ParseError::UnknownType("depthUpdate".into()))
    );
    assert_eq!(coinbase::parse(r#"{"type":"l2update","product_id":"BTC-USD"}"#, RECEIVED), Err(ParseError::UnknownType("l2update".into())));
    assert_eq!(kraken::parse(r#"{"channel":"book","data":[]}"#, RECEIVED), Err(ParseError::UnknownType("book".into())));
    let err = coinbase::parse(&lines("coinbase.jsonl")[2].replace("\"400.23\"", "\"4x0\""), RECEIVED).unwrap_err();
    assert!(err.to_string().starts_with("price:"), "{err}");
    let err = binance::parse(&lines("binance.jsonl")[1].replace("\"100\"", "\"0\""), RECEIVED, false).unwrap_err();
    assert!(err.to_string().contains("quantity 0 is not positive"), "{err}");
    let err = kraken::parse(&lines("kraken.jsonl")[2].replace("\"side\":\"buy\"", "\"side\":\"up\""), RECEIVED).unwrap_err();
    assert!(err.to_string().contains("\"up\" is not buy or sell"), "{err}");
}
