-- name: current_policy
SELECT * FROM refund_policy ORDER BY version DESC LIMIT 1;

-- name: insert_policy
INSERT INTO refund_policy (version, policy, updated_by)
VALUES ((SELECT max(version) + 1 FROM refund_policy), $1, $2)
RETURNING *;

-- name: lock_policy
-- Serialises policy updates until commit, so a masked update merges into the latest policy.
SELECT pg_advisory_xact_lock(hashtext('refund_policy'));

-- name: policy_version
SELECT * FROM refund_policy WHERE version = $1;

-- name: get_schedule
SELECT * FROM retry_schedule WHERE code = $1;

-- name: insert_schedule
INSERT INTO retry_schedule (code, description, intervals, max_attempts, timing,
                            allowed_start_hour, allowed_end_hour, max_span_days, wallet)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING *;

-- name: update_schedule
UPDATE retry_schedule
   SET description = $2, intervals = $3, max_attempts = $4, timing = $5,
       allowed_start_hour = $6, allowed_end_hour = $7, max_span_days = $8, wallet = $9,
       updated_at = now()
 WHERE code = $1
RETURNING *;

-- name: lock_schedule
SELECT * FROM retry_schedule WHERE code = $1 FOR UPDATE;

-- name: list_schedules
SELECT * FROM retry_schedule WHERE code > $1 ORDER BY code LIMIT $2;
