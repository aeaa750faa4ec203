-- name: claim
-- Lease due refund details. SKIP LOCKED lets any number of workers share the queue; a detail
-- whose worker died (lease expired) is taken again and its open attempt replayed.
WITH due AS (
    SELECT d.detail_id
      FROM refund_event_detail d
      JOIN refund_event r USING (refund_id)
     WHERE d.status IN ('PENDING', 'PROCESSING', 'RETRY_SCHEDULED', 'REQUIRES_ACTION')
       AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
       AND (
            (d.status = 'PENDING' AND r.status = 'APPROVED' AND $1::boolean
             AND r.created_at >= $3 AND r.created_at <= $4)
         OR (d.status IN ('RETRY_SCHEDULED', 'PROCESSING', 'REQUIRES_ACTION') AND $2::boolean
             AND d.next_retry_date >= $3 AND d.next_retry_date <= $4)
         OR (d.status = 'PROCESSING' AND d.lease_expires_at < now())
       )
     ORDER BY coalesce(d.next_retry_date, r.created_at)
     LIMIT $5
       FOR UPDATE OF d SKIP LOCKED
)
-- Joined back by primary key (= ANY of an array) so a generic plan still uses the index.
UPDATE refund_event_detail d
   SET lease_owner = $6, lease_expires_at = now() + make_interval(secs => $7)
 WHERE d.detail_id = ANY(ARRAY(SELECT detail_id FROM due))
RETURNING d.detail_id;

-- name: work_item
-- Everything the gateway call needs about one leased detail.
SELECT d.*, r.status AS refund_status, r.reason, r.currency, p.payment_id,
       p.gateway_transaction_id, p.metadata, s.max_attempts, s.intervals
  FROM refund_event_detail d
  JOIN refund_event r USING (refund_id)
  JOIN payment p ON p.payment_id = d.original_transaction_id
  JOIN retry_schedule s ON s.code = d.retry_schedule_code
 WHERE d.detail_id = $1 AND d.lease_owner = $2;

-- name: start_attempt
-- PENDING / RETRY_SCHEDULED -> PROCESSING with a new attempt number, under our lease.
UPDATE refund_event_detail
   SET status = 'PROCESSING', attempt_count = attempt_count + 1, attempt_open = true,
       attempt_started_at = now(), next_retry_date = NULL, updated_at = now()
 WHERE detail_id = $1 AND lease_owner = $2 AND status IN ('PENDING', 'RETRY_SCHEDULED')
RETURNING attempt_count, attempt_started_at;

-- name: record_outcome
-- The attempt's outcome, under our lease; the lease is released.
UPDATE refund_event_detail
   SET status = $3, gateway_refund_id = CASE WHEN $4 = '' THEN gateway_refund_id ELSE $4 END,
       attempt_open = $5, next_retry_date = $6, last_error_code = $7, last_error_message = $8,
       remaining_retry_count = $9, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE detail_id = $1 AND lease_owner = $2
RETURNING *;

-- name: release_lease
UPDATE refund_event_detail SET lease_owner = NULL, lease_expires_at = NULL
 WHERE detail_id = $1 AND lease_owner = $2;

-- name: detail_statuses
SELECT status FROM refund_event_detail WHERE refund_id = $1;

-- name: record_not_attempted
-- A new attempt that never reached the gateway, under our lease: given back (the next attempt
-- has the same number and idempotency key), the detail rescheduled; the lease is released.
UPDATE refund_event_detail
   SET status = 'RETRY_SCHEDULED', attempt_count = attempt_count - 1, attempt_open = false,
       next_retry_date = $3, last_error_code = $4, last_error_message = $5,
       remaining_retry_count = $6, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE detail_id = $1 AND lease_owner = $2
RETURNING *;

-- name: postpone
-- A replay or a sync that never reached the gateway, or a sync that learned nothing new: the
-- detail stays as it is (status, open attempt, gateway refund id) and is looked at again at $3
-- (NULL: not again); only its last error is replaced.
UPDATE refund_event_detail
   SET next_retry_date = $3, last_error_code = $4, last_error_message = $5,
       lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE detail_id = $1 AND lease_owner = $2
RETURNING *;

-- name: lock_detail
-- One detail with what recording an outcome needs (the columns of work_item), locked: for an
-- outcome the gateway reported by webhook, taken after the refund's lock (the billing job's
-- lock order).
SELECT d.*, r.status AS refund_status, r.reason, r.currency, p.payment_id,
       p.gateway_transaction_id, p.metadata, s.max_attempts, s.intervals
  FROM refund_event_detail d
  JOIN refund_event r USING (refund_id)
  JOIN payment p ON p.payment_id = d.original_transaction_id
  JOIN retry_schedule s ON s.code = d.retry_schedule_code
 WHERE d.detail_id = $1
   FOR UPDATE OF d;

-- name: apply_outcome
-- An outcome the gateway reported by webhook. No lease is needed: the caller holds the row
-- lock and checked the transition. A worker's lease on the detail ends here, so the worker's
-- own record of an older answer finds its lease lost and changes nothing.
UPDATE refund_event_detail
   SET status = $2, gateway_refund_id = CASE WHEN $3 = '' THEN gateway_refund_id ELSE $3 END,
       attempt_open = $4, next_retry_date = $5, last_error_code = $6, last_error_message = $7,
       remaining_retry_count = $8, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE detail_id = $1
RETURNING *;

-- name: detail_statuses_by_id
SELECT detail_id, status FROM refund_event_detail WHERE refund_id = $1;
