-- The outbox relay and the WatchEvents stream.

-- Who an event is about, copied from its payload when it is written, so that WatchEvents can
-- filter in SQL. Events written before this migration have none and match only watchers that
-- do not filter by them.
ALTER TABLE outbox
    ADD COLUMN customer_id text,
    ADD COLUMN payment_id text,
    ADD COLUMN subscription_id text;

CREATE INDEX outbox_customer_idx ON outbox (customer_id, position) WHERE customer_id IS NOT NULL;
CREATE INDEX outbox_payment_idx ON outbox (payment_id, position) WHERE payment_id IS NOT NULL;
CREATE INDEX outbox_subscription_idx ON outbox (subscription_id, position)
    WHERE subscription_id IS NOT NULL;

-- The watchers' horizon (service/outbox/feed.py) relies on positions being handed out in
-- the order of the nextval calls across sessions: a per-session cache would break that.
-- CACHE 1 is the default; it is stated here because correctness depends on it.
ALTER TABLE outbox ALTER COLUMN position SET CACHE 1;
