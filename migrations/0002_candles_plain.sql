-- Plain PostgreSQL: declarative range partitioning by open time (monthly partitions, created
-- ahead of time by the writer), and a BRIN index for range scans over time.
CREATE TABLE IF NOT EXISTS candles (
{columns}
) PARTITION BY RANGE (open_time);

CREATE INDEX IF NOT EXISTS candles_open_time_brin ON candles USING brin (open_time);
