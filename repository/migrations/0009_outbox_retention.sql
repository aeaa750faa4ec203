-- Published outbox events are kept for a while (REFUND_RETRY_OUTBOX_RETENTION_DAYS), then
-- deleted: RabbitMQ has them, and only WatchEvents' history reads them. pruned_through is the
-- highest position deleted so far: a WatchEvents cursor below it may have lost events after it,
-- so such a stream is refused (OUT_OF_RANGE) rather than resumed with a silent gap.
CREATE TABLE outbox_retention (
    id              int PRIMARY KEY CHECK (id = 1),
    pruned_through  bigint NOT NULL DEFAULT 0,
    pruned_at       timestamptz
);
INSERT INTO outbox_retention (id) VALUES (1);
-- The deletion finds the old published rows by this, however many recent ones there are.
-- (Marking a row published already updates every index of the row: the unpublished index's
-- predicate changes, so the update is never HOT; this adds one entry to that.)
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
