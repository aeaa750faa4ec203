-- Payment retries: plans, attempts, the decision behind every attempt time, and success
-- statistics the smart schedule learns from.

ALTER TABLE retry_schedule
    ADD COLUMN timing text NOT NULL DEFAULT 'FIXED' CHECK (timing IN ('FIXED', 'SMART')),
    ADD COLUMN allowed_start_hour int CHECK (allowed_start_hour BETWEEN 0 AND 23),
    ADD COLUMN allowed_end_hour int CHECK (allowed_end_hour BETWEEN 1 AND 24),
    ADD COLUMN max_span_days int CHECK (max_span_days BETWEEN 1 AND 120),
    ADD COLUMN wallet text NOT NULL DEFAULT 'AFTER_HARD_DECLINE'
        CHECK (wallet IN ('NEVER', 'AFTER_HARD_DECLINE', 'ROTATE')),
    ADD CONSTRAINT retry_schedule_hours_paired
        CHECK ((allowed_start_hour IS NULL) = (allowed_end_hour IS NULL));

INSERT INTO retry_schedule (code, description, intervals, max_attempts, timing,
                            allowed_start_hour, allowed_end_hour, max_span_days) VALUES
    ('payment-fixed', 'Failed payments: days 1, 3, 5 and 7 after the failure, 9:00-20:00 local',
     ARRAY[86400, 172800, 172800, 172800], 5, 'FIXED', 9, 20, 14),
    ('payment-smart', 'Failed payments: the hours and days that recover best, within 21 days',
     ARRAY[14400], 8, 'SMART', 8, 21, 21);

CREATE TABLE retry_plan (
    plan_id                uuid PRIMARY KEY,
    payment_id             text NOT NULL,          -- the failed payment (invoice payment) id
    billing_event_id       text NOT NULL DEFAULT '',
    customer_id            text NOT NULL,
    subscription_id        text NOT NULL DEFAULT '',
    currency               char(3) NOT NULL,
    amount                 bigint NOT NULL CHECK (amount > 0),
    gateway                text NOT NULL,
    schedule_code          text NOT NULL REFERENCES retry_schedule,
    time_zone              text NOT NULL,
    status                 text NOT NULL CHECK (status IN ('ACTIVE', 'PAUSED', 'RECOVERED',
                               'EXHAUSTED', 'CANCELED')),
    attempt_count          int NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    next_attempt_at        timestamptz,
    method_index           int NOT NULL DEFAULT 0 CHECK (method_index >= 0),
    waiting_for_method     boolean NOT NULL DEFAULT false,
    first_failed_at        timestamptz NOT NULL,
    status_reason          text NOT NULL DEFAULT '',
    metadata               jsonb NOT NULL DEFAULT '{}',
    lease_owner            text,
    lease_expires_at       timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
-- Every claim and attempt updates the plan row: leaving 15 % of each page free keeps those
-- updates on the page (HOT), so claiming 500 due plans of 10^6 costs ~2 ms instead of ~13 ms
-- (bench/retry_throughput.py, phase C).
ALTER TABLE retry_plan SET (fillfactor = 85);
-- One open plan per failed payment.
CREATE UNIQUE INDEX retry_plan_one_open ON retry_plan (payment_id)
    WHERE status IN ('ACTIVE', 'PAUSED');
CREATE INDEX retry_plan_customer_idx ON retry_plan (customer_id, created_at);
CREATE INDEX retry_plan_created_idx ON retry_plan (created_at, plan_id);
CREATE INDEX retry_plan_billing_event_idx ON retry_plan (billing_event_id)
    WHERE billing_event_id <> '';
-- The billing job's queue: only plans that can be due are indexed, so finding due work stays
-- flat however many plans are stored.
CREATE INDEX retry_plan_due_idx ON retry_plan (next_attempt_at)
    WHERE status = 'ACTIVE' AND next_attempt_at IS NOT NULL;

-- The customer's wallet for this plan: payment methods in the order they will be tried.
CREATE TABLE plan_payment_method (
    plan_id             uuid NOT NULL REFERENCES retry_plan,
    position            int NOT NULL CHECK (position >= 0),
    payment_method_id   text NOT NULL,
    network             text NOT NULL DEFAULT 'OTHER',
    added_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, position),
    UNIQUE (plan_id, payment_method_id)
);

CREATE TABLE payment_attempt (
    attempt_id            uuid PRIMARY KEY,
    plan_id               uuid NOT NULL REFERENCES retry_plan,
    attempt_number        int NOT NULL CHECK (attempt_number >= 1),
    source                text NOT NULL CHECK (source IN ('FAILURE', 'SCHEDULED', 'RETRY_NOW')),
    attempted_at          timestamptz NOT NULL,
    payment_method_id     text NOT NULL,
    network               text NOT NULL,
    outcome               text NOT NULL CHECK (outcome IN ('OPEN', 'SUCCEEDED', 'DECLINED',
                              'REQUIRES_ACTION', 'NOT_ATTEMPTED', 'UNKNOWN', 'PENDING')),
    decline_code          text NOT NULL DEFAULT '',
    visa_response_code    text NOT NULL DEFAULT '',
    mc_advice_code        text NOT NULL DEFAULT '',
    decline_class         text NOT NULL DEFAULT '',   -- class of this attempt's decline
    retry_of_class        text NOT NULL DEFAULT '',   -- class of the decline this attempt retried
    gateway_charge_id     text NOT NULL DEFAULT '',
    idempotency_key       text NOT NULL UNIQUE,
    message               text NOT NULL DEFAULT '',
    -- What the smart schedule learns from: the attempt's slot in the customer's time.
    local_hour            int NOT NULL CHECK (local_hour BETWEEN 0 AND 23),
    day_of_month          int NOT NULL CHECK (day_of_month BETWEEN 1 AND 31),
    days_since_failure    int NOT NULL CHECK (days_since_failure >= 0),
    UNIQUE (plan_id, attempt_number)
);
-- Network rules count attempts per card over a rolling window.
CREATE INDEX payment_attempt_card_idx ON payment_attempt (payment_method_id, attempted_at);

-- Why each attempt time was chosen: an operator can ask "why this time?".
CREATE TABLE retry_decision (
    plan_id             uuid NOT NULL REFERENCES retry_plan,
    sequence            int NOT NULL,
    decided_at          timestamptz NOT NULL DEFAULT now(),
    action              text NOT NULL CHECK (action IN ('RETRY', 'WAIT_FOR_PAYMENT_METHOD',
                            'STOP')),
    next_attempt_at     timestamptz,
    payment_method_id   text NOT NULL DEFAULT '',
    reason              text NOT NULL,
    rule_ids            text[] NOT NULL DEFAULT '{}',
    data                jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (plan_id, sequence)
);

-- Success rates by decline class and slot, rebuilt from payment_attempt by the billing job
-- (so a decision reads a few hundred rows, not the whole attempt history).
CREATE TABLE attempt_stats (
    decline_class   text NOT NULL,
    dimension       text NOT NULL CHECK (dimension IN ('hour', 'day_of_month',
                        'days_since_failure', 'overall')),
    bucket          int NOT NULL,
    attempts        bigint NOT NULL,
    successes       bigint NOT NULL,
    PRIMARY KEY (decline_class, dimension, bucket)
);
CREATE TABLE attempt_stats_refresh (
    id            int PRIMARY KEY CHECK (id = 1),
    refreshed_at  timestamptz NOT NULL
);
INSERT INTO attempt_stats_refresh VALUES (1, 'epoch');

-- A plan with its wallet, attempts and decisions, read in one round trip.
CREATE VIEW retry_plan_view AS
SELECT p.*,
       coalesce((SELECT jsonb_agg(to_jsonb(m) ORDER BY m.position)
                   FROM plan_payment_method m WHERE m.plan_id = p.plan_id), '[]') AS methods,
       coalesce((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.attempt_number)
                   FROM payment_attempt a WHERE a.plan_id = p.plan_id), '[]') AS attempts,
       coalesce((SELECT jsonb_agg(to_jsonb(d) ORDER BY d.sequence)
                   FROM retry_decision d WHERE d.plan_id = p.plan_id), '[]') AS decisions
  FROM retry_plan p;
