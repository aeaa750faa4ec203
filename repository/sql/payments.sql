-- name: insert_payment
INSERT INTO payment (payment_id, gateway, gateway_transaction_id, customer_id, subscription_id,
                     billing_event_id, currency, captured_amount, captured_at, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING created_at;

-- name: insert_items
INSERT INTO billing_event_item (payment_id, item_id, position, description, amount, tax,
                                service_period_start, service_period_end)
SELECT $1, item_id, position, description, amount, tax, period_start, period_end
  FROM unnest($2::text[], $3::int[], $4::text[], $5::bigint[], $6::bigint[],
              $7::timestamptz[], $8::timestamptz[])
       AS i(item_id, position, description, amount, tax, period_start, period_end);

-- name: get_payment
SELECT * FROM payment WHERE payment_id = $1;

-- name: lock_payment
SELECT * FROM payment WHERE payment_id = $1 FOR UPDATE;

-- name: get_items
SELECT * FROM billing_event_item WHERE payment_id = $1 ORDER BY position;

-- name: reserve
-- Reserve refund amounts on the payment and its items; the CHECK constraints refuse an
-- over-refund even if the caller's arithmetic were wrong.
WITH items AS (
    UPDATE billing_event_item b
       SET pending_amount = b.pending_amount + r.amount,
           pending_tax = b.pending_tax + r.tax
      FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS r(item_id, amount, tax)
     WHERE b.payment_id = $1 AND b.item_id = r.item_id
    RETURNING 1
)
UPDATE payment SET pending_refund_amount = pending_refund_amount + $5
 WHERE payment_id = $1 AND (SELECT count(*) FROM items) = cardinality($2::text[])
RETURNING pending_refund_amount;

-- name: release
-- Give a refund's reservation back (rejected, canceled or failed).
WITH items AS (
    UPDATE billing_event_item b
       SET pending_amount = b.pending_amount - r.amount,
           pending_tax = b.pending_tax - r.tax
      FROM refund_event_item r
     WHERE r.refund_id = $2 AND b.payment_id = $1 AND b.item_id = r.item_id
    RETURNING 1
)
UPDATE payment SET pending_refund_amount = pending_refund_amount - $3
 WHERE payment_id = $1 AND (SELECT count(*) FROM items) >= 0;

-- name: settle
-- Move a refund's reservation to refunded.
WITH items AS (
    UPDATE billing_event_item b
       SET pending_amount = b.pending_amount - r.amount,
           pending_tax = b.pending_tax - r.tax,
           refunded_amount = b.refunded_amount + r.amount,
           refunded_tax = b.refunded_tax + r.tax
      FROM refund_event_item r
     WHERE r.refund_id = $2 AND b.payment_id = $1 AND b.item_id = r.item_id
    RETURNING 1
)
UPDATE payment SET pending_refund_amount = pending_refund_amount - $3,
                   refunded_amount = refunded_amount + $3
 WHERE payment_id = $1 AND (SELECT count(*) FROM items) >= 0;

-- name: lock_settling
-- Serializes the transactions that settle a payment and those that start its retries:
-- RecordPayment (which recovers the open plans of its payment and billing event) and
-- RecordPaymentFailure (which starts no plan for a payment paid already, or of a cancelled
-- subscription); and a subscription's cancellation (which cancels its plans). Each locks its
-- keys ($1: the payment id, billing event, subscription) first, in order; the other then
-- waits for its COMMIT and sees what it wrote. Transaction-level advisory locks: released at
-- the end.
SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
  FROM (SELECT k FROM unnest($1::text[]) AS k ORDER BY k) keys;
