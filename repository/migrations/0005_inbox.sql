-- The consumers' inbox: a consumed message's event id is stored in the transaction of its
-- effect (repository/inbox.py), so a redelivered message finds its row and has no second
-- effect. A message handled without an effect (e.g. a cancellation of a period refunded
-- already) gets its row too, with outcome IGNORED and the reason in note.
CREATE TABLE inbox (
    consumer       text NOT NULL,              -- the event type it was consumed as
    event_id       text NOT NULL,
    event_type     text NOT NULL,
    outcome        text NOT NULL CHECK (outcome IN ('APPLIED', 'IGNORED')),
    note           text NOT NULL DEFAULT '',
    received_at    timestamptz NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- A subscription.cancelled event finds the subscription's last paid period by this.
CREATE INDEX payment_subscription_idx ON payment (subscription_id) WHERE subscription_id <> '';
