"""Reads Wick's kline WebSocket streams with Binance's own Python connector (`binance-connector`'s
SpotWebsocketStreamClient), unmodified: only its stream URL points at the gateway.

usage: binance_stream.py STREAM_URL COMBINED(0|1) COUNT SYMBOL:INTERVAL [SYMBOL:INTERVAL ...]
Subscribes with the client's own `kline()` calls (Binance's SUBSCRIBE method), prints
{"subscribed": <the server's answer>} once per subscription, then every kline event as a JSON
line until COUNT events arrived, then {"done": true}; a line {"error": ...} if the connection fails.
"""
import json
import sys
import threading

from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient


def main():
    stream_url, combined, count = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    pairs = [p.split(":", 1) for p in sys.argv[4:]]
    events = []
    done = threading.Event()

    def say(value):
        print(json.dumps(value), flush=True)

    def on_message(_, message):
        v = json.loads(message)
        if "result" in v or "error" in v:
            say({"subscribed": v})
            return
        events.append(v)
        say(v)
        if len(events) >= count:
            done.set()

    def on_error(_, error):
        say({"error": str(error)})
        done.set()

    client = SpotWebsocketStreamClient(stream_url=stream_url, is_combined=combined, on_message=on_message, on_error=on_error)
    for n, (symbol, interval) in enumerate(pairs, start=1):
        client.kline(symbol=symbol, interval=interval, id=n)
    done.wait(60)
    client.stop()
    say({"done": len(events) >= count})


if __name__ == "__main__":
    main()
