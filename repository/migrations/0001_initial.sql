-- Refund & retry service: the initial schema.
-- Money is always an integer count of minor units (bigint) beside an ISO 4217 code (char(3)).

CREATE TABLE payment (
    payment_id               text PRIMARY KEY,
    gateway                  text NOT NULL,
    gateway_transaction_id   text NOT NULL,
    customer_id              text NOT NULL,
    subscription_id          text NOT NULL DEFAULT '',
    billing_event_id         text NOT NULL DEFAULT '',
    currency                 char(3) NOT NULL,
    captured_amount          bigint NOT NULL CHECK (captured_amount > 0),
    refunded_amount          bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    pending_refund_amount    bigint NOT NULL DEFAULT 0 CHECK (pending_refund_amount >= 0),
    captured_at              timestamptz NOT NULL,
    metadata                 jsonb NOT NULL DEFAULT '{}',
    created_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_no_over_refund
        CHECK (refunded_amount + pending_refund_amount <= captured_amount),
    CONSTRAINT payment_gateway_transaction_unique UNIQUE (gateway, gateway_transaction_id)
);
CREATE INDEX payment_customer_idx ON payment (customer_id);

CREATE TABLE billing_event_item (
    payment_id             text NOT NULL REFERENCES payment,
    item_id                text NOT NULL,
    position               int NOT NULL,
    description            text NOT NULL DEFAULT '',
    amount                 bigint NOT NULL CHECK (amount >= 0),
    tax                    bigint NOT NULL CHECK (tax >= 0),
    service_period_start   timestamptz,
    service_period_end     timestamptz,
    refunded_amount        bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    refunded_tax           bigint NOT NULL DEFAULT 0 CHECK (refunded_tax >= 0),
    pending_amount         bigint NOT NULL DEFAULT 0 CHECK (pending_amount >= 0),
    pending_tax            bigint NOT NULL DEFAULT 0 CHECK (pending_tax >= 0),
    PRIMARY KEY (payment_id, item_id),
    CONSTRAINT item_no_over_refund CHECK (
        refunded_amount + pending_amount <= amount AND refunded_tax + pending_tax <= tax
    ),
    CONSTRAINT item_period_ordered CHECK (service_period_end >= service_period_start)
);

CREATE TABLE retry_schedule (
    code           text PRIMARY KEY,
    description    text NOT NULL DEFAULT '',
    intervals      bigint[] NOT NULL,               -- seconds
    max_attempts   int NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO retry_schedule (code, description, intervals, max_attempts) VALUES
    ('refund-default', 'Refunds failing at the gateway: after 1 hour, 6 hours, then daily',
     ARRAY[3600, 21600, 86400], 5);

CREATE TABLE refund_policy (
    version        bigint PRIMARY KEY,
    policy         jsonb NOT NULL,
    updated_by     text NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO refund_policy (version, policy, updated_by) VALUES
    (0, '{"auto_approve": {}, "tiers": [], "refund_window_seconds": 15552000}', 'system:migration');

CREATE TABLE refund_event (
    refund_id            uuid PRIMARY KEY,
    payment_id           text NOT NULL REFERENCES payment,
    customer_id          text NOT NULL,
    subscription_id      text NOT NULL DEFAULT '',
    currency             char(3) NOT NULL,
    amount               bigint NOT NULL CHECK (amount > 0),
    status               text NOT NULL CHECK (status IN ('PENDING_APPROVAL', 'APPROVED',
                             'PROCESSING', 'SUCCEEDED', 'FAILED', 'REJECTED', 'CANCELED',
                             'REQUIRES_ACTION')),
    reason               text NOT NULL DEFAULT '',
    requested_by         text NOT NULL,
    required_approvals   int NOT NULL CHECK (required_approvals >= 0),
    auto_approved        boolean NOT NULL DEFAULT false,
    decision_reason      text NOT NULL DEFAULT '',
    decided_by           text NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refund_event_payment_idx ON refund_event (payment_id, created_at);
CREATE INDEX refund_event_customer_idx ON refund_event (customer_id, created_at);
CREATE INDEX refund_event_created_idx ON refund_event (created_at, refund_id);
CREATE INDEX refund_event_status_idx ON refund_event (status, created_at);

CREATE TABLE refund_event_item (
    refund_id    uuid NOT NULL REFERENCES refund_event,
    payment_id   text NOT NULL,
    item_id      text NOT NULL,
    amount       bigint NOT NULL CHECK (amount >= 0),
    tax          bigint NOT NULL CHECK (tax >= 0),
    PRIMARY KEY (refund_id, item_id),
    FOREIGN KEY (payment_id, item_id) REFERENCES billing_event_item
);

CREATE TABLE refund_event_detail (
    detail_id                 uuid PRIMARY KEY,
    refund_id                 uuid NOT NULL REFERENCES refund_event,
    original_transaction_id   text NOT NULL REFERENCES payment,
    amount                    bigint NOT NULL CHECK (amount > 0),
    gateway                   text NOT NULL,
    status                    text NOT NULL CHECK (status IN ('PENDING', 'PROCESSING',
                                  'RETRY_SCHEDULED', 'SUCCEEDED', 'FAILED', 'CANCELED',
                                  'REQUIRES_ACTION')),
    gateway_refund_id         text NOT NULL DEFAULT '',
    retry_schedule_code       text NOT NULL REFERENCES retry_schedule,
    next_retry_date           timestamptz,
    attempt_count             int NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    remaining_retry_count     int NOT NULL CHECK (remaining_retry_count >= 0),
    last_error_code           text NOT NULL DEFAULT '',
    last_error_message        text NOT NULL DEFAULT '',
    -- The billing job's lease: a claimed detail whose worker died is reclaimed after it.
    lease_owner               text,
    lease_expires_at          timestamptz,
    -- True while the current attempt's outcome is not recorded (so a reclaim replays it
    -- with the same idempotency key instead of starting a new attempt).
    attempt_open              boolean NOT NULL DEFAULT false,
    attempt_started_at        timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refund_event_detail_refund_idx ON refund_event_detail (refund_id);
-- The billing job's work queue: only rows that may need work are indexed.
CREATE INDEX refund_event_detail_due_idx ON refund_event_detail (next_retry_date)
    WHERE status IN ('PENDING', 'PROCESSING', 'RETRY_SCHEDULED', 'REQUIRES_ACTION');

CREATE TABLE refund_approval (
    refund_id     uuid NOT NULL REFERENCES refund_event,
    approver      text NOT NULL,
    comment       text NOT NULL DEFAULT '',
    approved_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (refund_id, approver)
);

-- AIP-155 request ids: the same id with the same request returns the first result.
CREATE TABLE idempotency_key (
    scope          text NOT NULL,
    request_id     text NOT NULL,
    fingerprint    bytea NOT NULL,
    resource_id    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, request_id)
);

-- Double-entry ledger. A journal entry balances per currency (checked at commit).
CREATE TABLE journal_entry (
    journal_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('capture', 'refund')),
    payment_id     text NOT NULL REFERENCES payment,
    refund_id      uuid REFERENCES refund_event,
    currency       char(3) NOT NULL,
    posted_at      timestamptz NOT NULL DEFAULT now(),
    description    text NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX journal_entry_one_capture ON journal_entry (payment_id) WHERE kind = 'capture';
CREATE UNIQUE INDEX journal_entry_one_refund ON journal_entry (refund_id) WHERE kind = 'refund';

CREATE TABLE ledger_line (
    journal_id   bigint NOT NULL REFERENCES journal_entry,
    line_no      int NOT NULL,
    account      text NOT NULL,
    debit        bigint NOT NULL DEFAULT 0 CHECK (debit >= 0),
    credit       bigint NOT NULL DEFAULT 0 CHECK (credit >= 0),
    PRIMARY KEY (journal_id, line_no),
    CONSTRAINT ledger_line_one_side CHECK ((debit = 0) <> (credit = 0))
);

CREATE FUNCTION journal_must_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    debits bigint;
    credits bigint;
BEGIN
    SELECT coalesce(sum(debit), 0), coalesce(sum(credit), 0) INTO debits, credits
      FROM ledger_line WHERE journal_id = NEW.journal_id;
    IF debits <> credits THEN
        RAISE EXCEPTION 'journal % does not balance: debits % credits %',
            NEW.journal_id, debits, credits USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_line_balanced AFTER INSERT ON ledger_line
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_must_balance();

-- Transactional outbox: written in the transaction of the change it reports.
CREATE TABLE outbox (
    position         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid NOT NULL UNIQUE,
    event_type       text NOT NULL,
    aggregate_type   text NOT NULL,
    aggregate_id     text NOT NULL,
    payload          bytea NOT NULL,              -- refundretry.v1.Event, protobuf binary
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (position) WHERE published_at IS NULL;

-- Append-only, hash-chained audit trail.
CREATE TABLE audit_chain_head (
    id          int PRIMARY KEY CHECK (id = 1),
    sequence    bigint NOT NULL,
    last_hash   bytea NOT NULL
);
INSERT INTO audit_chain_head VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_event (
    sequence        bigint PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    actor           text NOT NULL,
    action          text NOT NULL,
    entity_type     text NOT NULL,
    entity_id       text NOT NULL,
    data            jsonb NOT NULL,
    previous_hash   bytea NOT NULL,
    hash            bytea NOT NULL
);
CREATE INDEX audit_event_entity_idx ON audit_event (entity_type, entity_id, sequence);
CREATE INDEX audit_event_time_idx ON audit_event (occurred_at);

-- The hash of a row: SHA-256 over the previous hash and a canonical text of the row. The time
-- is written as integer microseconds since the epoch so the text never depends on TimeZone.
CREATE FUNCTION audit_row_hash(previous bytea, seq bigint, occurred timestamptz, actor text,
                               action text, entity_type text, entity_id text, data jsonb)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(previous || convert_to(
        seq::text || E'\x1f' || (extract(epoch FROM occurred) * 1000000)::bigint::text
        || E'\x1f' || actor || E'\x1f' || action || E'\x1f' || entity_type || E'\x1f'
        || entity_id || E'\x1f' || data::text, 'UTF8'))
$$;

-- Chains every new row to the previous one. The head row's lock serialises writers from this
-- insert to their commit, so writers insert their audit row last in the transaction.
CREATE FUNCTION audit_event_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head audit_chain_head%ROWTYPE;
BEGIN
    SELECT * INTO head FROM audit_chain_head WHERE id = 1 FOR UPDATE;
    NEW.sequence := head.sequence + 1;
    NEW.previous_hash := head.last_hash;
    NEW.hash := audit_row_hash(NEW.previous_hash, NEW.sequence, NEW.occurred_at, NEW.actor,
                               NEW.action, NEW.entity_type, NEW.entity_id, NEW.data);
    UPDATE audit_chain_head SET sequence = NEW.sequence, last_hash = NEW.hash WHERE id = 1;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_event_chain BEFORE INSERT ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_chain();

-- The audit trail and the ledger are append-only: a correction is a new row, never an edit.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_event_no_update BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_entry_no_update BEFORE UPDATE OR DELETE ON journal_entry
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_line_no_update BEFORE UPDATE OR DELETE ON ledger_line
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_entry_no_truncate BEFORE TRUNCATE ON journal_entry
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_line_no_truncate BEFORE TRUNCATE ON ledger_line
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_event, journal_entry, ledger_line FROM PUBLIC;

-- A refund with its details, items and approvals, read in one round trip.
CREATE VIEW refund_view AS
SELECT r.*,
       coalesce((SELECT jsonb_agg(to_jsonb(d) ORDER BY d.created_at, d.detail_id)
                   FROM refund_event_detail d WHERE d.refund_id = r.refund_id), '[]') AS details,
       coalesce((SELECT jsonb_agg(to_jsonb(i) ORDER BY i.item_id)
                   FROM refund_event_item i WHERE i.refund_id = r.refund_id), '[]') AS items,
       coalesce((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.approved_at, a.approver)
                   FROM refund_approval a WHERE a.refund_id = r.refund_id), '[]') AS approvals
  FROM refund_event r;
