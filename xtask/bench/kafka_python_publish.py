"""Baseline for the replay benchmark: a plain Kafka client (kafka-python) publishing the same
Binance trades CSV, one JSON record per trade (the form Wick accepts from plain clients, with the
content-type header), keyed by instrument, with the seed's producer settings (acks=1, linger 10 ms).

usage: python3 kafka_python_publish.py BROKER TOPIC CSV_FILE MAX_TRADES
prints: <trades> <seconds> <kafka-python version>
"""
import json
import sys
import time

import kafka
from kafka import KafkaProducer


def main():
    broker, topic, path, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    producer = KafkaProducer(bootstrap_servers=broker, acks=1, linger_ms=10, batch_size=16384)
    headers = [("content-type", b"application/json")]
    key = b"BINANCE:BTC-USDT"
    sent = 0
    start = time.perf_counter()
    with open(path) as f:
        for line in f:
            if sent >= limit:
                break
            trade_id, price, qty, _quote, t, maker, _best = line.rstrip("\n").split(",")
            record = {
                "instrument": "BINANCE:BTC-USDT",
                "trade_id": int(trade_id),
                "price": price,
                "quantity": qty,
                "side": "sell" if maker == "True" else "buy",
                "event_time": int(t),
            }
            producer.send(topic, key=key, value=json.dumps(record).encode(), headers=headers)
            sent += 1
    producer.flush()
    elapsed = time.perf_counter() - start
    print(sent, elapsed, kafka.__version__)


if __name__ == "__main__":
    main()
