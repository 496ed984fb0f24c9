-- Wick's bookkeeping: the storage decision, and the persistence-writer's consumed offsets (stored
-- in the same transaction as the candles they produced).
CREATE TABLE IF NOT EXISTS wick_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS writer_offsets (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);
