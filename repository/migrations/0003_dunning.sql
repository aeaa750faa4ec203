-- Dunning: campaigns of customer notices and retries by day since the first failure, a final
-- action when a plan is exhausted, per customer segment; customers excluded from dunning.

CREATE TABLE dunning_campaign (
    code           text PRIMARY KEY,
    description    text NOT NULL DEFAULT '',
    steps          jsonb NOT NULL,                 -- [{"day": 0, "kind": "NOTIFY", "template": "..."}]
    final_action   text NOT NULL CHECK (final_action IN ('NONE', 'CANCEL_SUBSCRIPTION',
                       'MARK_UNPAID', 'PAUSE_SUBSCRIPTION')),
    segment        jsonb NOT NULL DEFAULT '{}',    -- plan metadata it matches, e.g. {"country": "DE"}
    priority       int NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO dunning_campaign (code, description, steps, final_action) VALUES
    ('default', 'Notice at the failure, a reminder on day 3, a final notice on day 7',
     '[{"day": 0, "kind": "NOTIFY", "template": "payment_failed"},
       {"day": 3, "kind": "NOTIFY", "template": "payment_reminder"},
       {"day": 7, "kind": "NOTIFY", "template": "final_notice"}]', 'MARK_UNPAID');

CREATE TABLE dunning_exclusion (
    customer_id    text PRIMARY KEY,
    reason         text NOT NULL DEFAULT '',
    excluded_by    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE retry_plan
    ADD COLUMN campaign_code text REFERENCES dunning_campaign,
    ADD COLUMN dunning_excluded boolean NOT NULL DEFAULT false,
    ADD COLUMN next_dunning_at timestamptz;
CREATE INDEX retry_plan_dunning_due_idx ON retry_plan (next_dunning_at)
    WHERE status IN ('ACTIVE', 'PAUSED') AND next_dunning_at IS NOT NULL;

CREATE TABLE dunning_step_run (
    plan_id       uuid NOT NULL REFERENCES retry_plan,
    step_index    int NOT NULL,
    day           int NOT NULL,
    kind          text NOT NULL,
    template      text NOT NULL DEFAULT '',
    run_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, step_index)
);

DROP VIEW retry_plan_view;
CREATE VIEW retry_plan_view AS
SELECT p.*,
       coalesce((SELECT jsonb_agg(to_jsonb(m) ORDER BY m.position)
                   FROM plan_payment_method m WHERE m.plan_id = p.plan_id), '[]') AS methods,
       coalesce((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.attempt_number)
                   FROM payment_attempt a WHERE a.plan_id = p.plan_id), '[]') AS attempts,
       coalesce((SELECT jsonb_agg(to_jsonb(d) ORDER BY d.sequence)
                   FROM retry_decision d WHERE d.plan_id = p.plan_id), '[]') AS decisions,
       coalesce((SELECT jsonb_agg(to_jsonb(s) ORDER BY s.step_index)
                   FROM dunning_step_run s WHERE s.plan_id = p.plan_id), '[]') AS dunning_steps
  FROM retry_plan p;
