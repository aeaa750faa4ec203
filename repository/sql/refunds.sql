-- name: insert_refund
INSERT INTO refund_event (refund_id, payment_id, customer_id, subscription_id, currency, amount,
                          status, reason, requested_by, required_approvals, auto_approved)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11);

-- name: insert_refund_items
INSERT INTO refund_event_item (refund_id, payment_id, item_id, amount, tax)
SELECT $1, $2, item_id, amount, tax
  FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS i(item_id, amount, tax);

-- name: insert_detail
INSERT INTO refund_event_detail (detail_id, refund_id, original_transaction_id, amount, gateway,
                                 status, retry_schedule_code, remaining_retry_count)
VALUES ($1, $2, $3, $4, $5, 'PENDING', $6,
        (SELECT max_attempts - 1 FROM retry_schedule WHERE code = $6));

-- name: lock_refund
SELECT * FROM refund_event WHERE refund_id = $1 FOR UPDATE;

-- name: set_status
-- Guarded transition: no row back means the refund was not in an allowed source state.
UPDATE refund_event
   SET status = $2, decision_reason = coalesce($4, decision_reason),
       decided_by = coalesce($5, decided_by), updated_at = now()
 WHERE refund_id = $1 AND status = ANY($3::text[])
RETURNING status;

-- name: insert_approval
INSERT INTO refund_approval (refund_id, approver, comment) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING approved_at;

-- name: approvers
SELECT approver FROM refund_approval WHERE refund_id = $1;

-- name: cancel_details
UPDATE refund_event_detail SET status = 'CANCELED', updated_at = now()
 WHERE refund_id = $1 AND status = 'PENDING';

-- name: view
SELECT * FROM refund_view WHERE refund_id = $1;

-- name: list
-- Keyset pagination on (created_at, refund_id).
SELECT *
  FROM refund_view r
 WHERE ($1::text IS NULL OR r.status = $1)
   AND ($2::text IS NULL OR r.payment_id = $2)
   AND ($3::text IS NULL OR r.customer_id = $3)
   AND ($4::timestamptz IS NULL OR r.created_at >= $4)
   AND ($5::timestamptz IS NULL OR r.created_at < $5)
   AND ($6::timestamptz IS NULL OR (r.created_at, r.refund_id) > ($6, $7::uuid))
 ORDER BY r.created_at, r.refund_id
 LIMIT $8;
