-- A cancelled subscription's unpaid invoices are no longer collected (Stripe's default: "upon
-- subscription cancellation, Stripe stops automatic collection of all finalized invoices ...
-- to prevent unexpected payment attempts after the customer has canceled").
--
-- subscription_cancellation: the subscriptions a subscription.cancelled event named, the
-- first event's cancel time kept. RecordPaymentFailure starts no retries for them: the
-- consumers of payment.failed and subscription.cancelled read independent queues, so an
-- invoice's failure can be handled after its subscription's cancellation.
CREATE TABLE subscription_cancellation (
    subscription_id  text PRIMARY KEY CHECK (subscription_id <> ''),
    customer_id      text NOT NULL DEFAULT '',
    cancelled_at     timestamptz NOT NULL,          -- the event's cancel_time
    event_id         text NOT NULL DEFAULT '',
    recorded_at      timestamptz NOT NULL DEFAULT now()
);

-- subscription_plan: each plan of a subscription, written when the plan is created and never
-- updated, so a cancellation finds the subscription's plans by index while the billing job's
-- updates of retry_plan (two per attempt, rarely HOT) maintain no index more: one on
-- retry_plan (subscription_id) cost each of them an index entry.
CREATE TABLE subscription_plan (
    subscription_id  text NOT NULL CHECK (subscription_id <> ''),
    plan_id          uuid NOT NULL REFERENCES retry_plan,
    PRIMARY KEY (subscription_id, plan_id)
);
INSERT INTO subscription_plan (subscription_id, plan_id)
SELECT subscription_id, plan_id FROM retry_plan WHERE subscription_id <> '';
