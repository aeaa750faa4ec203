-- name: insert_plan
-- The plan, and for a plan of a subscription its subscription_plan row (what a cancellation
-- finds it by). $13: what payments recorded before the failure paid of it.
WITH plan AS (
    INSERT INTO retry_plan (plan_id, payment_id, billing_event_id, customer_id, subscription_id,
                            currency, amount, gateway, schedule_code, time_zone, status,
                            first_failed_at, metadata, amount_paid)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'ACTIVE', $11, $12, $13)
    RETURNING plan_id, subscription_id
)
INSERT INTO subscription_plan (subscription_id, plan_id)
SELECT subscription_id, plan_id FROM plan WHERE subscription_id <> '';

-- name: open_plan_for_payment
SELECT * FROM retry_plan WHERE payment_id = $1 AND status IN ('ACTIVE', 'PAUSED') FOR UPDATE;

-- name: lock_plan
SELECT * FROM retry_plan WHERE plan_id = $1 FOR UPDATE;

-- name: add_method
-- Append a payment method to the wallet; nothing when it is already there.
INSERT INTO plan_payment_method (plan_id, position, payment_method_id, network)
SELECT $1, coalesce(max(position) + 1, 0), $2, $3 FROM plan_payment_method WHERE plan_id = $1
ON CONFLICT (plan_id, payment_method_id) DO NOTHING
RETURNING position;

-- name: methods
SELECT * FROM plan_payment_method WHERE plan_id = $1 ORDER BY position;

-- name: insert_attempt
INSERT INTO payment_attempt (attempt_id, plan_id, attempt_number, source, attempted_at,
                             payment_method_id, network, outcome, decline_code,
                             visa_response_code, mc_advice_code, decline_class, retry_of_class,
                             gateway_charge_id, idempotency_key, message, local_hour,
                             day_of_month, days_since_failure, amount)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20);

-- name: next_attempt_number
-- Attempt numbers (and so idempotency keys) never repeat, even when an attempt that never
-- reached the gateway does not count against the schedule.
SELECT coalesce(max(attempt_number), 0) + 1 FROM payment_attempt WHERE plan_id = $1;

-- name: open_attempt
SELECT * FROM payment_attempt
 WHERE plan_id = $1 AND outcome IN ('OPEN', 'UNKNOWN')
 ORDER BY attempt_number DESC LIMIT 1;

-- name: card_history
-- What the network rules need about these cards, from every plan: attempts within the
-- longest window, every decline that forbids the card for good however old (a Visa
-- category-1 or Mastercard 03/21 decline is classified HARD), and each card's first decline
-- (the Visa limit counts reattempts after it).
SELECT attempted_at, payment_method_id, network, outcome, decline_code, visa_response_code,
       mc_advice_code
  FROM payment_attempt
 WHERE payment_method_id = ANY($1::text[]) AND (attempted_at > $2 OR decline_class = 'HARD')
UNION
SELECT * FROM (
    SELECT DISTINCT ON (payment_method_id) attempted_at, payment_method_id, network, outcome,
           decline_code, visa_response_code, mc_advice_code
      FROM payment_attempt
     WHERE payment_method_id = ANY($1::text[]) AND outcome IN ('DECLINED', 'REQUIRES_ACTION')
     ORDER BY payment_method_id, attempted_at
) first_declines
 ORDER BY attempted_at;

-- name: next_decision_sequence
SELECT coalesce(max(sequence), 0) + 1 FROM retry_decision WHERE plan_id = $1;

-- name: insert_decision
INSERT INTO retry_decision (plan_id, sequence, action, next_attempt_at, payment_method_id,
                            reason, rule_ids, data)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: apply_decision
UPDATE retry_plan
   SET next_attempt_at = $2, method_index = $3, waiting_for_method = $4,
       attempt_count = $5, updated_at = now()
 WHERE plan_id = $1;

-- name: set_status
-- Guarded transition: no row back means the plan was in none of the allowed states.
UPDATE retry_plan
   SET status = $2, status_reason = $4, next_attempt_at = CASE WHEN $2 = 'ACTIVE'
       THEN next_attempt_at ELSE NULL END, lease_owner = NULL, lease_expires_at = NULL,
       updated_at = now()
 WHERE plan_id = $1 AND status = ANY($3::text[])
RETURNING status;

-- name: view
SELECT * FROM retry_plan_view WHERE plan_id = $1;

-- name: list
SELECT *
  FROM retry_plan_view p
 WHERE ($1::text IS NULL OR p.status = $1)
   AND ($2::text IS NULL OR p.customer_id = $2)
   AND ($3::text IS NULL OR p.subscription_id = $3)
   AND ($4::text IS NULL OR p.payment_id = $4)
   AND ($5::timestamptz IS NULL OR (p.created_at, p.plan_id) > ($5, $6::uuid))
 ORDER BY p.created_at, p.plan_id
 LIMIT $7;

-- name: open_plans_for_subscription
-- The open plans of a subscription, locked in plan_id order.
SELECT p.*
  FROM subscription_plan s
  JOIN retry_plan p ON p.plan_id = s.plan_id
 WHERE s.subscription_id = $1 AND p.status IN ('ACTIVE', 'PAUSED')
 ORDER BY p.plan_id
   FOR UPDATE OF p;

-- name: record_cancellation
-- A subscription's cancellation, kept once: the first event's cancel time stays. Returns
-- the row when this call recorded it, nothing when it was recorded before.
INSERT INTO subscription_cancellation (subscription_id, customer_id, cancelled_at, event_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (subscription_id) DO NOTHING
RETURNING *;

-- name: cancellation
SELECT * FROM subscription_cancellation WHERE subscription_id = $1;

-- name: open_plans_for_billing_event
SELECT * FROM retry_plan
 WHERE status IN ('ACTIVE', 'PAUSED')
   AND (payment_id = $1 OR ($2 <> '' AND billing_event_id = $2))
 ORDER BY plan_id
   FOR UPDATE;

-- name: open_plans_of_billing_events
-- The open plans of these billing events ($1, none ''), locked in plan_id order: a retry
-- attempt of another plan of each collected it (retry_plan_billing_event_idx).
SELECT * FROM retry_plan
 WHERE billing_event_id = ANY($1::text[]) AND billing_event_id <> ''
   AND status IN ('ACTIVE', 'PAUSED')
 ORDER BY plan_id
   FOR UPDATE;

-- name: add_paid
-- A payment paid $2 of the plan's amount, not all that was left (the plan goes on collecting
-- the rest).
UPDATE retry_plan SET amount_paid = amount_paid + $2, updated_at = now()
 WHERE plan_id = $1;

-- name: recovered_already
-- A plan of the failed payment $1 (billing event $2, '' for none) that a retry recovered, in
-- words; nothing when there is none.
SELECT 'retry plan ' || plan_id || ' recovered it at ' || updated_at
  FROM retry_plan
 WHERE status = 'RECOVERED' AND (payment_id = $1 OR ($2 <> '' AND billing_event_id = $2))
 ORDER BY updated_at
 LIMIT 1;

-- name: payments_of
-- The payments recorded with the failed payment's id $1 or its billing event $2 ('' for none),
-- oldest first: what they paid of it.
SELECT payment_id, currency, captured_amount, captured_at
  FROM payment
 WHERE payment_id = $1 OR ($2 <> '' AND billing_event_id = $2)
 ORDER BY captured_at, payment_id;

-- name: claim_due
-- The plans a chunk of the billing job attempts, claimed by the chunk's open transaction: up
-- to $2 plans due by $1 whose gateway is one of $3, but none of $4 (those the job's run took
-- already: one attempt per plan per run), with their wallets (ids and networks in wallet
-- order). SKIP LOCKED lets any number of workers share them: the rows stay locked
-- until the open transaction commits their leases (open_attempts), so no other worker sees
-- them in between. A plan whose worker died (lease expired) is due again and its open
-- attempt is replayed with the same key. Only plans of the gateways this worker can call now:
-- a gateway that is not configured here, or whose circuit breaker is open, keeps its due
-- work scheduled and untouched.
WITH due AS (
    SELECT plan_id FROM retry_plan
     WHERE status = 'ACTIVE' AND next_attempt_at <= $1
       AND (lease_expires_at IS NULL OR lease_expires_at < now())
       AND gateway = ANY($3::text[])
       AND NOT plan_id = ANY($4::uuid[])
     ORDER BY next_attempt_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
-- The join back is by primary key (= ANY of an array), so even a generic plan of this
-- prepared statement looks the rows up by index instead of scanning the table.
SELECT p.*, w.wallet_ids, w.wallet_networks
  FROM retry_plan p
 CROSS JOIN LATERAL plan_wallet(p.plan_id) w
 WHERE p.plan_id = ANY(ARRAY(SELECT plan_id FROM due))
 ORDER BY p.plan_id;

-- name: claim_plan
-- Lease one plan (RetryNow), in the caller's transaction that holds its row lock.
UPDATE retry_plan SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3)
 WHERE plan_id = $1
RETURNING plan_id;

-- name: renew_leases
-- The leases of a chunk's plans, renewed while the chunk charges (a slow gateway must not let
-- them run out, or another worker would take a plan this one is charging): only those worker
-- $2 still holds. A plan whose outcome is recorded holds no lease any more, and one that
-- another worker took after this worker's lease ran out is left to it.
UPDATE retry_plan SET lease_expires_at = now() + make_interval(secs => $3)
 WHERE plan_id = ANY($1::uuid[]) AND lease_owner = $2
RETURNING plan_id;

-- name: release_leases
UPDATE retry_plan SET lease_owner = NULL, lease_expires_at = NULL
 WHERE plan_id = ANY($1::uuid[]) AND lease_owner = $2;

-- name: stats
SELECT decline_class, dimension, bucket, attempts, successes FROM attempt_stats;

-- name: stats_age
SELECT now() - refreshed_at FROM attempt_stats_refresh WHERE id = 1;

-- name: clear_stats
-- Run with refresh_stats in one transaction; the lock keeps two refreshes from interleaving.
WITH refreshed AS (
    UPDATE attempt_stats_refresh SET refreshed_at = now() WHERE id = 1 RETURNING 1
)
DELETE FROM attempt_stats WHERE (SELECT count(*) FROM refreshed) >= 0;

-- name: refresh_stats
-- Rebuild the success rates of retries by the class of the decline they retried.
WITH retried AS (
    SELECT retry_of_class AS decline_class, local_hour, day_of_month,
           least(days_since_failure, 60) AS days, (outcome = 'SUCCEEDED')::int AS ok
      FROM payment_attempt
     WHERE source <> 'FAILURE' AND retry_of_class <> '' AND outcome NOT IN ('OPEN', 'UNKNOWN')
)
INSERT INTO attempt_stats (decline_class, dimension, bucket, attempts, successes)
SELECT decline_class, 'hour', local_hour, count(*), sum(ok) FROM retried
 GROUP BY decline_class, local_hour
UNION ALL
SELECT decline_class, 'day_of_month', day_of_month, count(*), sum(ok) FROM retried
 GROUP BY decline_class, day_of_month
UNION ALL
SELECT decline_class, 'days_since_failure', days, count(*), sum(ok) FROM retried
 GROUP BY decline_class, days
UNION ALL
SELECT decline_class, 'overall', 0, count(*), sum(ok) FROM retried GROUP BY decline_class;

-- The billing job works on chunks of plans: one statement per step for the whole chunk.

-- name: leased_plans
-- Plans of a chunk, locked in plan_id order so two workers' chunks never wait on each other in
-- a cycle, with their wallets (ids and networks in wallet order): those leased by worker $2,
-- and with $3 (not NULL) also those due by $3 that nobody holds (a chunk whose open
-- transaction failed is run again plan by plan: its claims were rolled back).
SELECT p.*, w.wallet_ids, w.wallet_networks
  FROM retry_plan p
 CROSS JOIN LATERAL plan_wallet(p.plan_id) w
 WHERE p.plan_id = ANY($1::uuid[])
   AND (p.lease_owner = $2
        OR (p.status = 'ACTIVE' AND p.next_attempt_at <= $3
            AND (p.lease_expires_at IS NULL OR p.lease_expires_at < now())))
 ORDER BY p.plan_id
   FOR UPDATE OF p;

-- name: schedules
SELECT * FROM retry_schedule WHERE code = ANY($1::text[]);

-- name: attempt_facts
-- Per plan: the next attempt number, the class of the latest decline, and the attempt a
-- worker that died left open (replayed with its key, for its amount: NULL for an attempt
-- written before migration 0014, which charged the plan's amount). Two index probes per plan on
-- (plan_id, attempt_number), walked backwards from the latest attempt: the cost grows with
-- the chunk, never with the chunk squared (a join of the plans' aggregates back to their
-- attempts did, as a nested loop with a join filter, in the generic plan).
SELECT p.plan_id,
       l.attempt_number + 1 AS next_number,
       coalesce((SELECT d.decline_class FROM payment_attempt d
                  WHERE d.plan_id = p.plan_id AND d.decline_class <> ''
                  ORDER BY d.attempt_number DESC LIMIT 1), '') AS last_class,
       CASE WHEN l.outcome IN ('OPEN', 'UNKNOWN') THEN l.attempt_id END AS open_attempt_id,
       l.attempt_number, l.source, l.payment_method_id, l.network, l.retry_of_class,
       l.attempted_at, l.gateway_charge_id, l.amount
  FROM (SELECT DISTINCT unnest($1::uuid[]) AS plan_id) p
  JOIN LATERAL (SELECT * FROM payment_attempt a WHERE a.plan_id = p.plan_id
                 ORDER BY a.attempt_number DESC LIMIT 1) l ON true
 ORDER BY p.plan_id;

-- name: busy_cards
-- Attempts on one card never overlap. Each card about to be charged ($1, for the plan beside
-- it in $2) is locked (a transaction-level advisory lock; all of them, in card order, before
-- any check, so two chunks never wait on each other in a cycle), and a plan is named busy when
-- another plan has an attempt on its card whose outcome is not known yet (OPEN: being
-- charged; UNKNOWN: waiting to be replayed), whether that plan is in another worker's chunk
-- or in this one. The locks last to the caller's COMMIT, by which its own OPEN attempts are
-- visible to the next check: of two workers charging plans on one card, the second sees the
-- first's attempt in flight and waits for its outcome. (A chunk holds one lock per card, and
-- a worker opens one chunk at a time: workers x chunk size stay below PostgreSQL's shared
-- lock table, max_locks_per_transaction x max_connections.) An unresolved attempt of a plan
-- that is settled (RECOVERED by a payment, or ended otherwise) keeps no card busy: nothing
-- replays it any more (the plan is never due again), and waiting for it would hold every other
-- plan on the card forever. Its outcome is named in the plan's status reason for a person.
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::uuid[]) AS w(card, plan_id)
), locked AS MATERIALIZED (
    SELECT card, pg_advisory_xact_lock(hashtextextended('card:' || card, 0))
      FROM (SELECT DISTINCT card FROM wanted ORDER BY card) cards
)
SELECT w.plan_id FROM wanted w
 WHERE (SELECT count(*) FROM locked) >= 0  -- every lock taken before the first check
   AND EXISTS (SELECT 1 FROM payment_attempt a JOIN retry_plan p ON p.plan_id = a.plan_id
                WHERE a.payment_method_id = w.card AND a.outcome IN ('OPEN', 'UNKNOWN')
                  AND a.plan_id <> w.plan_id AND p.status IN ('ACTIVE', 'PAUSED'));

-- name: open_attempts
-- The OPEN attempts of a chunk ($1-$14, one element per attempt), and the leases of the plans
-- the chunk goes on with ($15: those attempted now, and those it attempts after another
-- plan's outcome on their card) for worker $16 for $17 seconds. A plan with a new attempt
-- counts it at once: attempt_count counts the attempts that reach the issuer (recording a
-- NOT_ATTEMPTED gives it back).
WITH added AS (
    INSERT INTO payment_attempt (attempt_id, plan_id, attempt_number, source, attempted_at,
                                 payment_method_id, network, outcome, idempotency_key,
                                 retry_of_class, local_hour, day_of_month, days_since_failure,
                                 amount)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::int[], $12::int[], $13::int[], $14::bigint[])
    RETURNING plan_id
)
UPDATE retry_plan p
   SET lease_owner = $16, lease_expires_at = now() + make_interval(secs => $17),
       attempt_count = p.attempt_count + CASE WHEN a.plan_id IS NULL THEN 0 ELSE 1 END,
       waiting_for_method = CASE WHEN a.plan_id IS NULL THEN p.waiting_for_method ELSE false END,
       updated_at = CASE WHEN a.plan_id IS NULL THEN p.updated_at ELSE now() END
  FROM unnest($15::uuid[]) AS l(plan_id)
  LEFT JOIN added a ON a.plan_id = l.plan_id
 WHERE p.plan_id = l.plan_id;

-- name: finish_attempts
-- The outcomes of a chunk's attempts. Only the record transaction of the worker holding the
-- plan's lease writes an attempt's outcome, with the plan locked (leased_plans): a worker
-- whose lease ran out finds its plan gone from leased_plans and writes nothing. So no filter
-- on the outcome here: PostgreSQL estimated one from its statistics (OPEN attempts are rare
-- in the table) and, for chunks of a few hundred, planned a sequential scan joined to the
-- arrays by a nested loop, whose cost grew with the chunk squared.
-- Only the ids come back: the job holds the rest of each row (what it inserted, or found open,
-- and the outcome it writes here), and decoding every row again cost it more.
UPDATE payment_attempt a
   SET outcome = u.outcome, decline_code = u.decline_code,
       visa_response_code = u.visa_response_code, mc_advice_code = u.mc_advice_code,
       decline_class = u.decline_class, gateway_charge_id = u.gateway_charge_id,
       message = u.message
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::text[])
       AS u(attempt_id, outcome, decline_code, visa_response_code, mc_advice_code,
            decline_class, gateway_charge_id, message)
 WHERE a.attempt_id = u.attempt_id
RETURNING a.attempt_id;

-- name: settled_open_attempts
-- Of these attempts ($1), those still OPEN whose plan ended while they were being charged (a
-- payment recorded for it, or a failure that exhausted it, cleared its lease): no other
-- worker replays them, for an ended plan is never due again (its status is final). Locked, so
-- finish_attempts then writes their outcomes.
SELECT a.attempt_id
  FROM payment_attempt a
  JOIN retry_plan p ON p.plan_id = a.plan_id
 WHERE a.attempt_id = ANY($1::uuid[]) AND a.outcome = 'OPEN'
   AND p.status NOT IN ('ACTIVE', 'PAUSED')
   FOR UPDATE OF a;

-- name: insert_decisions
-- At most one decision per plan per call: each gets the plan's next sequence number.
-- Returns what the database chose (the number, the time); the caller holds the rest. The
-- data are JSON texts (see journal.audit_append_many for why not a jsonb[]).
INSERT INTO retry_decision (plan_id, sequence, action, next_attempt_at, payment_method_id,
                            reason, rule_ids, data)
SELECT u.plan_id,
       coalesce((SELECT max(d.sequence) FROM retry_decision d WHERE d.plan_id = u.plan_id), 0)
           + 1,
       u.action, u.next_attempt_at, u.payment_method_id, u.reason,
       string_to_array(nullif(u.rule_ids, ''), ' '), u.data::jsonb
  FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
              $7::text[])
       AS u(plan_id, action, next_attempt_at, payment_method_id, reason, rule_ids, data)
RETURNING plan_id, sequence, decided_at;

-- name: move_plans
-- Each plan to its new state, its lease released; a plan that is no longer ACTIVE has no
-- next attempt. The plans are the ones leased_plans locked in this transaction, holding this
-- worker's lease; the lease is not tested again here, for the reason finish_attempts gives.
-- Returns only the update time: the caller holds the rest (the row it locked and the values
-- it set), and decoding whole plan rows again cost the job more than it saved.
UPDATE retry_plan p
   SET status = u.status, status_reason = u.status_reason,
       next_attempt_at = CASE WHEN u.status = 'ACTIVE' THEN u.next_attempt_at END,
       method_index = u.method_index, waiting_for_method = u.waiting_for_method,
       attempt_count = u.attempt_count, lease_owner = NULL, lease_expires_at = NULL,
       updated_at = now()
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::bool[],
              $7::int[])
       AS u(plan_id, status, status_reason, next_attempt_at, method_index, waiting_for_method,
            attempt_count)
 WHERE p.plan_id = u.plan_id
RETURNING p.plan_id, p.updated_at;
