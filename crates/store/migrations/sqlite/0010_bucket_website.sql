-- A bucket's static website (`model::bucket::Website` as JSON), NULL when it has none.
-- A column of the bucket's row, so it goes with the bucket and needs no cleanup.
ALTER TABLE buckets ADD COLUMN website TEXT;
