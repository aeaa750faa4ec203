-- name: idempotency_claim
-- Claim a request id for this request; no row back means it was used before.
INSERT INTO idempotency_key (scope, request_id, fingerprint, resource_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING resource_id;

-- name: idempotency_get
SELECT fingerprint, resource_id FROM idempotency_key WHERE scope = $1 AND request_id = $2;

-- name: outbox_add
-- One row, as before migration 0004; the service writes with outbox_add_many. Kept for the
-- benchmarks' raw paths (bench/), which write the same rows without the service's code.
INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, payload)
VALUES ($1, $2, $3, $4, $5);

-- name: outbox_add_many
-- Every outbox event of a transaction in one statement (arrays, one element per event, in
-- the order added), and one notification for the whole transaction: NOTIFY is delivered at
-- commit, and its payload is the highest position written.
-- The transaction id is taken (assigned if the transaction has none yet) before the first
-- position is drawn: the watchers' horizon (service/outbox/feed.py) needs every writer to own
-- its xid before it owns a position.
WITH tx AS MATERIALIZED (
    SELECT pg_current_xact_id() AS xid
), added AS (
    INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, payload,
                        customer_id, payment_id, subscription_id)
    SELECT e.event_id, e.event_type, e.aggregate_type, e.aggregate_id, e.payload,
           e.customer_id, e.payment_id, e.subscription_id
      FROM tx,
           unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                  $6::text[], $7::text[], $8::text[])
               WITH ORDINALITY AS e(event_id, event_type, aggregate_type, aggregate_id, payload,
                                    customer_id, payment_id, subscription_id, n)
     ORDER BY e.n
    RETURNING position
)
SELECT pg_notify($9, max(position)::text) FROM added;

-- name: audit_append
-- One row, chained by the row trigger. Kept for the benchmarks' raw paths (bench/); the
-- service writes with audit_append_many.
INSERT INTO audit_event (occurred_at, actor, action, entity_type, entity_id, data)
VALUES (now(), $1, $2, $3, $4, $5)
RETURNING sequence;

-- name: audit_append_many
-- Every audit row of a transaction (arrays, one element per row, in order), chained by one
-- call: written last in the transaction, so the chain head stays locked only until COMMIT.
-- The data come as JSON texts in a text[] (sent in binary), cast here: a jsonb[] parameter
-- travels as one array literal, every element quoted and escaped by the client and parsed
-- back by PostgreSQL's array_in before each element's jsonb_in.
SELECT audit_append_many($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]::jsonb[]);

-- name: audit_list
SELECT * FROM audit_event
 WHERE ($1::text IS NULL OR entity_type = $1)
   AND ($2::text IS NULL OR entity_id = $2)
   AND ($3::timestamptz IS NULL OR occurred_at >= $3)
   AND ($4::timestamptz IS NULL OR occurred_at < $4)
   AND sequence > $5
 ORDER BY sequence
 LIMIT $6;

-- name: audit_verify
-- The first row whose stored hash or link disagrees with a recomputation, and the count.
WITH checked AS (
    SELECT sequence, hash, previous_hash,
           lag(hash) OVER (ORDER BY sequence) AS actual_previous,
           lag(sequence) OVER (ORDER BY sequence) AS previous_sequence,
           audit_row_hash(previous_hash, sequence, occurred_at, actor, action, entity_type,
                          entity_id, data) AS recomputed
      FROM audit_event
)
SELECT (SELECT count(*) FROM audit_event) AS rows_checked,
       (SELECT sequence FROM audit_chain_head) AS head_sequence,
       (SELECT last_hash FROM audit_chain_head) AS head_hash,
       (SELECT max(sequence) FROM audit_event) AS max_sequence,
       (SELECT hash FROM audit_event ORDER BY sequence DESC LIMIT 1) AS last_hash,
       b.sequence AS broken_sequence,
       CASE
           WHEN b.sequence IS NULL THEN NULL
           WHEN b.recomputed <> b.hash THEN 'content does not match its hash'
           WHEN b.previous_sequence IS DISTINCT FROM b.sequence - 1
                AND NOT (b.previous_sequence IS NULL AND b.sequence = 1)
               THEN 'rows before it are missing'
           ELSE 'previous_hash does not match the previous row'
       END AS problem
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (
      SELECT * FROM checked
       WHERE recomputed <> hash
          OR (previous_sequence IS NULL AND sequence <> 1)
          OR (previous_sequence IS NOT NULL AND previous_sequence <> sequence - 1)
          OR (actual_previous IS NOT NULL AND actual_previous <> previous_hash)
       ORDER BY sequence
       LIMIT 1
  ) b ON true;
