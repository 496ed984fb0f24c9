-- TimescaleDB 2.x: a hypertable on open time, compressed by instrument and interval after
-- {compress_after}, optionally with a retention policy.
CREATE TABLE IF NOT EXISTS candles (
{columns}
);

SELECT create_hypertable('candles', 'open_time', chunk_time_interval => INTERVAL '{chunk_interval}', if_not_exists => TRUE);

ALTER TABLE candles SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'instrument, interval',
    timescaledb.compress_orderby = 'open_time DESC'
);

SELECT add_compression_policy('candles', INTERVAL '{compress_after}', if_not_exists => TRUE);
