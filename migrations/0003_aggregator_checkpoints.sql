-- ingest-aggregator checkpoints, one row per (topic, partition): the offset from which a replay
-- rebuilds every candle that can still change, and the state at that offset (the open and
-- still-revisable candles, watermarks and duplicate-detection state of the partition's instruments,
-- protobuf `wick.v1.PartitionState`). Written only after the output up to that offset was
-- acknowledged by the broker.
CREATE TABLE IF NOT EXISTS aggregator_checkpoints (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    state       bytea       NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
