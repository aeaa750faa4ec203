-- A payment that covers only part of a failed payment no longer ends its retry plan.
--
-- retry_plan.amount_paid: what payments recorded for the plan's payment or billing event have
-- paid of `amount` so far (same currency). The plan goes on collecting the rest,
-- `amount - amount_paid`, as Stripe keeps retrying an invoice's `amount_remaining`; a payment
-- that covers the rest ends it RECOVERED. Before this migration a payment of any amount, in
-- any currency, ended the plan RECOVERED.
ALTER TABLE retry_plan ADD COLUMN amount_paid bigint NOT NULL DEFAULT 0;
ALTER TABLE retry_plan ADD CONSTRAINT retry_plan_amount_paid_check
    CHECK (amount_paid >= 0 AND amount_paid < amount);

-- payment_attempt.amount: what the attempt charged (for the FAILURE row, the failed payment's
-- amount). An attempt replayed after its worker died charges the same amount under the same
-- idempotency key (a gateway refuses a key reused with other parameters), whatever was paid
-- meanwhile. NULL for the attempts written before: they charged their plan's `amount`.
ALTER TABLE payment_attempt ADD COLUMN amount bigint CHECK (amount > 0);

-- The view's p.* was expanded when it was created: created again, it shows the new column.
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
