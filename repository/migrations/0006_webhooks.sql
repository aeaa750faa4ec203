-- Gateway webhooks: every event received (applied once, by its id), and payment disputes.

-- One row per gateway event, written in the transaction of its effect (repository/webhooks.py):
-- a replayed event finds its row and has no second effect. Only what the service read from the
-- event is kept (ids, statuses, amounts), never the gateway's whole object: no card data.
CREATE TABLE webhook_event (
    gateway       text NOT NULL,
    -- Stripe: the event id (evt_...); Adyen: eventCode:pspReference:success (its unique key).
    event_id      text NOT NULL,
    event_type    text NOT NULL,
    object_id     text NOT NULL DEFAULT '',   -- the refund, charge or dispute it is about
    status        text NOT NULL CHECK (status IN ('APPLIED', 'IGNORED', 'UNMATCHED')),
    note          text NOT NULL DEFAULT '',   -- why it was ignored or unmatched, or what it did
    data          jsonb NOT NULL DEFAULT '{}',
    occurred_at   timestamptz,                -- when the gateway says the event happened
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, event_id)
);
CREATE INDEX webhook_event_object_idx ON webhook_event (gateway, object_id);
-- Events about objects this service does not know, for an operator to look at.
CREATE INDEX webhook_event_unmatched_idx ON webhook_event (received_at) WHERE status = 'UNMATCHED';

-- A webhook finds the refund detail by the gateway's refund id, and the retry attempt by the
-- gateway's charge id.
CREATE INDEX refund_event_detail_gateway_refund_idx ON refund_event_detail (gateway, gateway_refund_id)
    WHERE gateway_refund_id <> '';
CREATE INDEX payment_attempt_gateway_charge_idx ON payment_attempt (gateway_charge_id)
    WHERE gateway_charge_id <> '';

-- Disputes (chargebacks) of recorded payments, as the gateways report them. No money moves
-- here: the row and its events tell people and other services.
CREATE TABLE payment_dispute (
    gateway          text NOT NULL,
    dispute_id       text NOT NULL,           -- Stripe: dp_...; Adyen: the dispute's pspReference
    payment_id       text NOT NULL REFERENCES payment,
    currency         char(3) NOT NULL,
    amount           bigint NOT NULL CHECK (amount >= 0),
    reason           text NOT NULL DEFAULT '',
    status           text NOT NULL CHECK (status IN ('OPEN', 'WON', 'LOST', 'CLOSED')),
    gateway_status   text NOT NULL DEFAULT '',
    -- How far the dispute has gone at the gateway: an event of a lower stage is older than what
    -- is recorded and is ignored (webhooks arrive out of order).
    stage            int NOT NULL CHECK (stage >= 0),
    opened_at        timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, dispute_id)
);
CREATE INDEX payment_dispute_payment_idx ON payment_dispute (payment_id);
