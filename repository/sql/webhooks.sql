-- name: claim_event
-- Store a webhook event's id in the transaction of its effect; no row back means it was
-- received before (a concurrent delivery of the same event waits here until the first one's
-- transaction ends, then finds the row).
INSERT INTO webhook_event (gateway, event_id, event_type, object_id, status, data, occurred_at)
VALUES ($1, $2, $3, $4, 'IGNORED', $5, $6)
ON CONFLICT DO NOTHING
RETURNING received_at;

-- name: settle_event
UPDATE webhook_event SET status = $3, note = $4 WHERE gateway = $1 AND event_id = $2;

-- name: refund_detail_by_gateway_refund_id
-- The refund detail a gateway refund id belongs to. Not locked here: recording the outcome
-- locks the refund, then the detail (the billing job's lock order).
SELECT detail_id, refund_id, status
  FROM refund_event_detail
 WHERE gateway = $1 AND gateway_refund_id = $2 AND gateway_refund_id <> '';

-- name: attempt_by_gateway_charge_id
-- The latest retry attempt that charged through this gateway charge id, and its plan (locked).
SELECT a.plan_id, a.attempt_number, a.outcome, p.status AS plan_status
  FROM payment_attempt a
  JOIN retry_plan p USING (plan_id)
 WHERE a.gateway_charge_id = $2 AND a.gateway_charge_id <> '' AND p.gateway = $1
 ORDER BY a.attempted_at DESC, a.attempt_number DESC
 LIMIT 1
   FOR UPDATE OF p;

-- name: make_plan_due
-- The retry job reads the charge at its next run and records it through its normal path.
UPDATE retry_plan SET next_attempt_at = now(), updated_at = now()
 WHERE plan_id = $1 AND status = 'ACTIVE'
RETURNING next_attempt_at;

-- name: payment_by_gateway_transaction
SELECT * FROM payment
 WHERE gateway = $1 AND gateway_transaction_id = ANY($2::text[])
 ORDER BY created_at
 LIMIT 1;

-- name: lock_dispute
SELECT * FROM payment_dispute WHERE gateway = $1 AND dispute_id = $2 FOR UPDATE;

-- name: insert_dispute
INSERT INTO payment_dispute (gateway, dispute_id, payment_id, currency, amount, reason, status,
                             gateway_status, stage)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: update_dispute
UPDATE payment_dispute
   SET amount = $3, reason = CASE WHEN $4 = '' THEN reason ELSE $4 END, status = $5,
       gateway_status = $6, stage = $7, updated_at = now()
 WHERE gateway = $1 AND dispute_id = $2
RETURNING *;

-- name: reported_outcome
-- The latest stored event of these types about a gateway refund or charge, whatever it came to
-- (an event that arrived before the billing job stored the gateway's id was UNMATCHED, and
-- still tells).
SELECT data FROM webhook_event
 WHERE gateway = $1 AND object_id = $2 AND event_type = ANY($3::text[])
 ORDER BY occurred_at DESC NULLS LAST, received_at DESC
 LIMIT 1;
