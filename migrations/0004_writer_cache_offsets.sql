-- persistence-writer: how far the Redis L2 cache is known to be current, per partition. After a
-- crash or a Redis outage the writer resumes reading from here (at or before `next_offset`): the
-- database upserts of the records in between change nothing, and the cache gets what it missed.
ALTER TABLE writer_offsets ADD COLUMN IF NOT EXISTS cache_next_offset bigint;
