"""Reads Wick's /api/v3/klines with Binance's own Python connector (`binance-connector`),
unmodified: only its base URL points at the gateway.

usage: binance_klines.py BASE_URL SYMBOL INTERVAL [key=value ...]
Prints {"klines": [...]} or {"error_code": ..., "error_message": ..., "status": ...} as JSON.
"""
import json
import sys

from binance.error import ClientError
from binance.spot import Spot


def main():
    base_url, symbol, interval = sys.argv[1:4]
    kwargs = {}
    for arg in sys.argv[4:]:
        key, value = arg.split("=", 1)
        kwargs[key] = int(value) if key in ("startTime", "endTime", "limit") else value
    client = Spot(base_url=base_url, timeout=10)
    try:
        print(json.dumps({"klines": client.klines(symbol, interval, **kwargs)}))
    except ClientError as e:
        print(json.dumps({"status": e.status_code, "error_code": e.error_code, "error_message": e.error_message}))


if __name__ == "__main__":
    main()
