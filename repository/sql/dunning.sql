-- name: insert_campaign
INSERT INTO dunning_campaign (code, description, steps, final_action, segment, priority)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: update_campaign
UPDATE dunning_campaign
   SET description = $2, steps = $3, final_action = $4, segment = $5, priority = $6,
       updated_at = now()
 WHERE code = $1
RETURNING *;

-- name: lock_campaign
SELECT * FROM dunning_campaign WHERE code = $1 FOR UPDATE;

-- name: get_campaign
SELECT * FROM dunning_campaign WHERE code = $1;

-- name: all_campaigns
SELECT * FROM dunning_campaign ORDER BY code;

-- name: list_campaigns
SELECT * FROM dunning_campaign WHERE code > $1 ORDER BY code LIMIT $2;

-- name: exclude
INSERT INTO dunning_exclusion (customer_id, reason, excluded_by) VALUES ($1, $2, $3)
ON CONFLICT (customer_id) DO UPDATE SET reason = EXCLUDED.reason,
    excluded_by = EXCLUDED.excluded_by, created_at = now();

-- name: include
DELETE FROM dunning_exclusion WHERE customer_id = $1;

-- name: is_excluded
SELECT EXISTS (SELECT 1 FROM dunning_exclusion WHERE customer_id = $1);

-- name: mark_customer_plans
-- Open plans follow a change of the customer's exclusion.
UPDATE retry_plan SET dunning_excluded = $2, updated_at = now()
 WHERE customer_id = $1 AND status IN ('ACTIVE', 'PAUSED');

-- name: set_plan_dunning
UPDATE retry_plan SET campaign_code = $2, dunning_excluded = $3, next_dunning_at = $4
 WHERE plan_id = $1;

-- name: set_next_dunning
UPDATE retry_plan SET next_dunning_at = $2 WHERE plan_id = $1;

-- name: step_runs
SELECT step_index FROM dunning_step_run WHERE plan_id = $1;

-- name: insert_step_run
INSERT INTO dunning_step_run (plan_id, step_index, day, kind, template)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING
RETURNING run_at;

-- name: claim_due
-- Plans with dunning steps due, locked for this transaction; SKIP LOCKED shares them out.
SELECT * FROM retry_plan
 WHERE status IN ('ACTIVE', 'PAUSED') AND next_dunning_at <= $1
 ORDER BY next_dunning_at
 LIMIT $2
   FOR UPDATE SKIP LOCKED;
