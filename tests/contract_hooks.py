"""Schemathesis hooks for tests/contract.rs: the two rules of the gateway that OpenAPI 3.0 cannot
state, because they tie two parameters together. The document says them in words (the
parameters' descriptions and the 400 response); here a 400 for a schema-valid request is let
through only when it is the gateway's answer to one of them and the request really breaks it:

- start after end (`/api/v1/candles`), startTime after endTime (`/api/v3/klines`);
- a `timeZone` that moves the interval's boundaries, so that the klines are combined from smaller
  stored candles, for more of them than `binance.max_source_candles` allows ("lower the limit").

Any other refusal of a valid request still fails the run.
"""

import re

import schemathesis

RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# Interval lengths in seconds; 1w and 1M are cut at a week and a month, moved by any offset.
SECONDS = {"1s": 1, "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400,
           "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400, "3d": 259200, "1w": None, "1M": None}


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (as wick-core computes them)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def micros(value):
    """A time as the gateway reads it, unclamped: epoch milliseconds or RFC 3339; None if neither."""
    value = str(value)
    if value.isdigit() and value.isascii():
        return int(value) * 1000
    found = RFC3339.fullmatch(value)
    if not found:
        return None
    y, mo, d, h, mi, s, fraction, sign, oh, om = found.groups()
    seconds = days_from_civil(int(y), int(mo), int(d)) * 86400 + int(h) * 3600 + int(mi) * 60 + min(int(s), 59)
    if sign:
        offset = int(oh) * 3600 + int(om) * 60
        seconds -= offset if sign == "+" else -offset
    return seconds * 1_000_000 + int(((fraction or "") + "000000")[:6])


def offset_minutes(value):
    """Binance's timeZone in minutes (`8`, `-1:30`, `+05:45`)."""
    value = str(value)
    sign = -1 if value.startswith("-") else 1
    hours, _, minutes = value.lstrip("+-").partition(":")
    return sign * (int(hours) * 60 + int(minutes or 0))


def refusal(response):
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message", body.get("msg", ""))) if isinstance(body, dict) else ""


def breaks_order(query, start, end):
    first, last = micros(query.get(start, "")), micros(query.get(end, ""))
    return first is not None and last is not None and first > last


def moves_boundaries(query):
    if "timeZone" not in query:
        return False
    shift = offset_minutes(query["timeZone"]) * 60
    length = SECONDS.get(str(query.get("interval")))
    return shift != 0 and (length is None or shift % length != 0)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if failure.code != "ST202" or response.status_code != 400:
        return True
    query, message = case.query or {}, refusal(response)
    if message == "start must not be after end" and breaks_order(query, "start", "end"):
        return False
    if message == "startTime must not be after endTime." and breaks_order(query, "startTime", "endTime"):
        return False
    if message.startswith("this timeZone combines") and message.endswith("lower the limit") and moves_boundaries(query):
        return False
    return True
