-- Analytics: the fold that keeps the daily roll-ups current, the backfill of a zone, and the
-- dashboard's reads (from the roll-ups, and the same figures from the raw tables).
-- Counted attempt: a retry (source <> 'FAILURE') that reached the issuer (SUCCEEDED, DECLINED,
-- REQUIRES_ACTION). Migration 0007 defines the change logs, facts and roll-up tables.

-- name: try_lock
-- One fold at a time across replicas (a session lock, taken before the fold's snapshot).
SELECT pg_try_advisory_lock($1);

-- name: unlock
SELECT pg_advisory_unlock($1);

-- name: initialized_at
SELECT initialized_at FROM analytics_state WHERE id = 1;

-- name: initialize
-- The first fold (or one after `reset`): the facts from the raw tables as this snapshot sees
-- them. What the logs hold was written by transactions this snapshot sees (so the raw tables
-- already show it) or by ones still running (invisible here, kept for the next fold).
DELETE FROM analytics_attempt_change;
DELETE FROM analytics_plan_change;
DELETE FROM analytics_refund_change;
DELETE FROM analytics_payment_day;
DELETE FROM analytics_refund_day;
DELETE FROM analytics_duration_day;
DELETE FROM analytics_zone;
DELETE FROM analytics_plan_fact;
DELETE FROM analytics_refund_fact;
INSERT INTO analytics_plan_fact SELECT * FROM analytics_plan_source;
INSERT INTO analytics_refund_fact SELECT * FROM analytics_refund_source;
UPDATE analytics_state SET initialized_at = now() WHERE id = 1;

-- name: reset
-- The next fold rebuilds everything from the raw tables.
UPDATE analytics_state SET initialized_at = NULL WHERE id = 1;

-- name: zones
SELECT zone FROM analytics_zone ORDER BY zone;

-- name: fold_attempts
-- The logged attempt changes this snapshot sees, into every rolled-up zone.
WITH taken AS (
    DELETE FROM analytics_attempt_change RETURNING *
), delta AS (
    SELECT z.zone, (t.attempted_at AT TIME ZONE z.zone)::date AS day, p.gateway,
           t.retry_of_class AS decline_class, p.currency,
           sum(t.sign) AS attempts,
           coalesce(sum(t.sign) FILTER (WHERE t.succeeded), 0) AS successes
      FROM taken t
      JOIN retry_plan p ON p.plan_id = t.plan_id
     CROSS JOIN analytics_zone z
     GROUP BY 1, 2, 3, 4, 5
    HAVING sum(t.sign) <> 0 OR coalesce(sum(t.sign) FILTER (WHERE t.succeeded), 0) <> 0
), folded AS (
    INSERT INTO analytics_payment_day AS d (zone, day, gateway, decline_class, currency,
                                            retry_attempts, retry_successes)
    SELECT zone, day, gateway, decline_class, currency, attempts, successes FROM delta
    ON CONFLICT (zone, day, gateway, decline_class, currency) DO UPDATE
       SET retry_attempts = d.retry_attempts + excluded.retry_attempts,
           retry_successes = d.retry_successes + excluded.retry_successes
    RETURNING 1
)
SELECT (SELECT count(*) FROM taken) AS changes;

-- name: take_plan_changes
WITH taken AS (DELETE FROM analytics_plan_change RETURNING plan_id)
SELECT DISTINCT plan_id FROM taken;

-- name: take_refund_changes
WITH taken AS (DELETE FROM analytics_refund_change RETURNING refund_id)
SELECT DISTINCT refund_id FROM taken;

-- name: fold_plans
-- Recompute the facts of these plans; what differs from the stored fact is taken out of the
-- roll-ups as it was counted and added as it is now, and the fact is replaced.
WITH old AS (
    SELECT plan_id, first_failed_at, gateway, decline_class, currency, outcome, amount,
           retries, recover_seconds
      FROM analytics_plan_fact WHERE plan_id = ANY($1::uuid[])
), fresh AS (
    SELECT plan_id, first_failed_at, gateway, decline_class, currency, outcome, amount,
           retries, recover_seconds
      FROM analytics_plan_source WHERE plan_id = ANY($1::uuid[])
), added AS (
    SELECT * FROM fresh EXCEPT SELECT * FROM old
), removed AS (
    SELECT * FROM old EXCEPT SELECT * FROM fresh
), saved AS (
    INSERT INTO analytics_plan_fact AS f SELECT * FROM added
    ON CONFLICT (plan_id) DO UPDATE
       SET first_failed_at = excluded.first_failed_at, gateway = excluded.gateway,
           decline_class = excluded.decline_class, currency = excluded.currency,
           outcome = excluded.outcome, amount = excluded.amount, retries = excluded.retries,
           recover_seconds = excluded.recover_seconds
    RETURNING 1
), dropped AS (
    DELETE FROM analytics_plan_fact f USING removed r
     WHERE f.plan_id = r.plan_id AND NOT EXISTS (SELECT 1 FROM fresh WHERE fresh.plan_id = r.plan_id)
    RETURNING 1
), zoned AS (
    SELECT z.zone, (d.first_failed_at AT TIME ZONE z.zone)::date AS day, d.*
      FROM (SELECT 1 AS sign, * FROM added UNION ALL SELECT -1, * FROM removed) d
     CROSS JOIN analytics_zone z
), payments AS (
    INSERT INTO analytics_payment_day AS t (zone, day, gateway, decline_class, currency,
                                            plans_recovered, plans_exhausted, plans_open,
                                            plans_canceled, amount_recovered, recovery_retries)
    SELECT zone, day, gateway, decline_class, currency,
           coalesce(sum(sign) FILTER (WHERE outcome = 'RECOVERED'), 0),
           coalesce(sum(sign) FILTER (WHERE outcome = 'EXHAUSTED'), 0),
           coalesce(sum(sign) FILTER (WHERE outcome = 'OPEN'), 0),
           coalesce(sum(sign) FILTER (WHERE outcome = 'CANCELED'), 0),
           coalesce(sum(sign * amount) FILTER (WHERE outcome = 'RECOVERED'), 0),
           coalesce(sum(sign * retries) FILTER (WHERE outcome = 'RECOVERED'), 0)
      FROM zoned
     GROUP BY zone, day, gateway, decline_class, currency
    ON CONFLICT (zone, day, gateway, decline_class, currency) DO UPDATE
       SET plans_recovered = t.plans_recovered + excluded.plans_recovered,
           plans_exhausted = t.plans_exhausted + excluded.plans_exhausted,
           plans_open = t.plans_open + excluded.plans_open,
           plans_canceled = t.plans_canceled + excluded.plans_canceled,
           amount_recovered = t.amount_recovered + excluded.amount_recovered,
           recovery_retries = t.recovery_retries + excluded.recovery_retries
    RETURNING 1
), durations AS (
    INSERT INTO analytics_duration_day AS t (zone, dimension, currency, day, metric, value,
                                             bucket, count)
    SELECT z.zone, p.dimension, c.currency, z.day, 'TIME_TO_RECOVER', p.value,
           analytics_bucket(z.recover_seconds), sum(z.sign)
      FROM zoned z
     CROSS JOIN LATERAL (VALUES ('', ''), ('GATEWAY', z.gateway),
                                ('DECLINE_CLASS', z.decline_class)) AS p(dimension, value)
     CROSS JOIN LATERAL (VALUES (z.currency::text), ('')) AS c(currency)
     WHERE z.recover_seconds IS NOT NULL
     GROUP BY 1, 2, 3, 4, 6, 7
    HAVING sum(z.sign) <> 0
    ON CONFLICT (zone, dimension, currency, day, metric, value, bucket) DO UPDATE
       SET count = t.count + excluded.count
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) + (SELECT count(*) FROM removed) AS changes;

-- name: fold_refunds
-- The same for refunds: refunds by status, and the approval lead time histogram.
WITH old AS (
    SELECT refund_id, created_at, gateway, currency, status, amount, approval_seconds
      FROM analytics_refund_fact WHERE refund_id = ANY($1::uuid[])
), fresh AS (
    SELECT refund_id, created_at, gateway, currency, status, amount, approval_seconds
      FROM analytics_refund_source WHERE refund_id = ANY($1::uuid[])
), added AS (
    SELECT * FROM fresh EXCEPT SELECT * FROM old
), removed AS (
    SELECT * FROM old EXCEPT SELECT * FROM fresh
), saved AS (
    INSERT INTO analytics_refund_fact AS f SELECT * FROM added
    ON CONFLICT (refund_id) DO UPDATE
       SET created_at = excluded.created_at, gateway = excluded.gateway,
           currency = excluded.currency, status = excluded.status, amount = excluded.amount,
           approval_seconds = excluded.approval_seconds
    RETURNING 1
), dropped AS (
    DELETE FROM analytics_refund_fact f USING removed r
     WHERE f.refund_id = r.refund_id
       AND NOT EXISTS (SELECT 1 FROM fresh WHERE fresh.refund_id = r.refund_id)
    RETURNING 1
), zoned AS (
    SELECT z.zone, (d.created_at AT TIME ZONE z.zone)::date AS day, d.*
      FROM (SELECT 1 AS sign, * FROM added UNION ALL SELECT -1, * FROM removed) d
     CROSS JOIN analytics_zone z
), refunds AS (
    INSERT INTO analytics_refund_day AS t (zone, day, gateway, currency, status, refunds, amount)
    SELECT zone, day, gateway, currency, status, sum(sign), sum(sign * amount)
      FROM zoned
     GROUP BY zone, day, gateway, currency, status
    HAVING sum(sign) <> 0 OR sum(sign * amount) <> 0
    ON CONFLICT (zone, day, gateway, currency, status) DO UPDATE
       SET refunds = t.refunds + excluded.refunds, amount = t.amount + excluded.amount
    RETURNING 1
), durations AS (
    INSERT INTO analytics_duration_day AS t (zone, dimension, currency, day, metric, value,
                                             bucket, count)
    SELECT z.zone, p.dimension, c.currency, z.day, 'APPROVAL_LEAD_TIME', p.value,
           analytics_bucket(z.approval_seconds), sum(z.sign)
      FROM zoned z
     CROSS JOIN LATERAL (VALUES ('', ''), ('GATEWAY', z.gateway)) AS p(dimension, value)
     CROSS JOIN LATERAL (VALUES (z.currency::text), ('')) AS c(currency)
     WHERE z.approval_seconds IS NOT NULL
     GROUP BY 1, 2, 3, 4, 6, 7
    HAVING sum(z.sign) <> 0
    ON CONFLICT (zone, dimension, currency, day, metric, value, bucket) DO UPDATE
       SET count = t.count + excluded.count
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) + (SELECT count(*) FROM removed) AS changes;

-- name: backfill_payments
-- New zones' payment roll-ups: attempts from the raw table, plans from their facts.
INSERT INTO analytics_payment_day (zone, day, gateway, decline_class, currency, retry_attempts,
                                   retry_successes, plans_recovered, plans_exhausted,
                                   plans_open, plans_canceled, amount_recovered,
                                   recovery_retries)
SELECT zone, day, gateway, decline_class, currency, sum(attempts), sum(successes),
       sum(recovered), sum(exhausted), sum(open), sum(canceled), sum(amount), sum(retries)
  FROM (
    SELECT z.zone, (a.attempted_at AT TIME ZONE z.zone)::date AS day, p.gateway,
           a.retry_of_class AS decline_class, p.currency, 1 AS attempts,
           (a.outcome = 'SUCCEEDED')::int AS successes, 0 AS recovered, 0 AS exhausted,
           0 AS open, 0 AS canceled, 0::bigint AS amount, 0::bigint AS retries
      FROM payment_attempt a
      JOIN retry_plan p ON p.plan_id = a.plan_id
     CROSS JOIN unnest($1::text[]) AS z(zone)
     WHERE a.source <> 'FAILURE' AND a.outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION')
    UNION ALL
    SELECT z.zone, (f.first_failed_at AT TIME ZONE z.zone)::date, f.gateway, f.decline_class,
           f.currency, 0, 0, (f.outcome = 'RECOVERED')::int, (f.outcome = 'EXHAUSTED')::int,
           (f.outcome = 'OPEN')::int, (f.outcome = 'CANCELED')::int,
           CASE WHEN f.outcome = 'RECOVERED' THEN f.amount ELSE 0 END,
           CASE WHEN f.outcome = 'RECOVERED' THEN f.retries ELSE 0 END
      FROM analytics_plan_fact f
     CROSS JOIN unnest($1::text[]) AS z(zone)
  ) facts
 GROUP BY zone, day, gateway, decline_class, currency;

-- name: backfill_refunds
INSERT INTO analytics_refund_day (zone, day, gateway, currency, status, refunds, amount)
SELECT z.zone, (f.created_at AT TIME ZONE z.zone)::date, f.gateway, f.currency, f.status,
       count(*), sum(f.amount)
  FROM analytics_refund_fact f
 CROSS JOIN unnest($1::text[]) AS z(zone)
 GROUP BY 1, 2, 3, 4, 5;

-- name: backfill_durations
INSERT INTO analytics_duration_day (zone, dimension, currency, day, metric, value, bucket, count)
SELECT d.zone, p.dimension, c.currency, d.day, d.metric, p.value, d.bucket, count(*)
  FROM (
    SELECT z.zone, (f.first_failed_at AT TIME ZONE z.zone)::date AS day,
           'TIME_TO_RECOVER' AS metric, f.gateway, f.decline_class, f.currency::text AS currency,
           analytics_bucket(f.recover_seconds) AS bucket
      FROM analytics_plan_fact f
     CROSS JOIN unnest($1::text[]) AS z(zone)
     WHERE f.recover_seconds IS NOT NULL
    UNION ALL
    SELECT z.zone, (f.created_at AT TIME ZONE z.zone)::date, 'APPROVAL_LEAD_TIME', f.gateway,
           NULL, f.currency::text, analytics_bucket(f.approval_seconds)
      FROM analytics_refund_fact f
     CROSS JOIN unnest($1::text[]) AS z(zone)
     WHERE f.approval_seconds IS NOT NULL
  ) d
 CROSS JOIN LATERAL (VALUES ('', ''), ('GATEWAY', d.gateway),
                            ('DECLINE_CLASS', d.decline_class)) AS p(dimension, value)
 CROSS JOIN LATERAL (VALUES (d.currency), ('')) AS c(currency)
 WHERE p.value IS NOT NULL
 GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- name: known_zones
SELECT name FROM pg_timezone_names WHERE name = ANY($1::text[]);

-- name: add_zones
INSERT INTO analytics_zone (zone, folded_at) SELECT unnest($1::text[]), now();

-- name: drop_zones
WITH gone AS (DELETE FROM analytics_zone WHERE zone = ANY($1::text[]) RETURNING zone),
     payments AS (DELETE FROM analytics_payment_day WHERE zone = ANY($1::text[]) RETURNING 1),
     refunds AS (DELETE FROM analytics_refund_day WHERE zone = ANY($1::text[]) RETURNING 1),
     durations AS (DELETE FROM analytics_duration_day WHERE zone = ANY($1::text[]) RETURNING 1)
SELECT count(*) FROM gone;

-- name: mark_folded
-- now(): the fold transaction's start; its snapshot was taken later, so every change
-- committed before this time is in the figures.
UPDATE analytics_zone SET folded_at = now();

-- The dashboard's reads. $1 zone, $2 first day, $3 last day (local dates, inclusive),
-- $4 group_by (DAY, GATEWAY, DECLINE_CLASS, CURRENCY), $5 currency ('' = every currency).
-- Rows: (key, currency, ...); refunds have no decline class (key '' then).

-- name: folded_at
SELECT folded_at FROM analytics_zone WHERE zone = $1;

-- name: payment_groups
SELECT analytics_group_key($4, day, gateway, decline_class, currency::text) AS key,
       currency::text AS currency,
       sum(retry_attempts)::bigint AS retry_attempts,
       sum(retry_successes)::bigint AS retry_successes,
       sum(plans_recovered)::bigint AS plans_recovered,
       sum(plans_exhausted)::bigint AS plans_exhausted,
       sum(plans_open)::bigint AS plans_open,
       sum(plans_canceled)::bigint AS plans_canceled,
       sum(amount_recovered)::bigint AS amount_recovered,
       sum(recovery_retries)::bigint AS recovery_retries
  FROM analytics_payment_day
 WHERE zone = $1 AND day BETWEEN $2 AND $3 AND ($5::text = '' OR currency::text = $5)
 GROUP BY 1, 2;

-- name: duration_rows
-- One metric's histogram rows in one projection, read straight off the primary key (each row
-- is one (day, value, bucket) already; the caller adds them up by its key): $4 metric,
-- $5 dimension ('', 'GATEWAY', 'DECLINE_CLASS'), currencies $6..$7 (('', '') every currency
-- together; (X, X) one; ('AAA', 'ZZZ') each).
SELECT day, currency, value, bucket, count
  FROM analytics_duration_day
 WHERE zone = $1 AND dimension = $5 AND currency BETWEEN $6 AND $7 AND day BETWEEN $2 AND $3
   AND metric = $4 AND count <> 0;

-- name: refund_groups
SELECT analytics_group_key($4, day, gateway, '', currency::text) AS key, status,
       currency::text AS currency, sum(refunds)::bigint AS refunds,
       sum(amount)::bigint AS amount
  FROM analytics_refund_day
 WHERE zone = $1 AND day BETWEEN $2 AND $3 AND ($5::text = '' OR currency::text = $5)
 GROUP BY 1, 2, 3
HAVING sum(refunds) <> 0 OR sum(amount) <> 0;

-- name: pending_approvals
-- Live, not rolled up: refunds waiting for approval now, requested within the range. The
-- status index finds them (there are few), whatever the number of refunds stored.
-- The payment is read only when grouping by gateway.
SELECT analytics_group_key($4, (r.created_at AT TIME ZONE $1)::date,
                           CASE WHEN $4 = 'GATEWAY' THEN (SELECT p.gateway FROM payment p
                                                           WHERE p.payment_id = r.payment_id)
                           END,
                           '', r.currency::text) AS key,
       r.currency::text AS currency, count(*) AS refunds, sum(r.amount)::bigint AS amount
  FROM refund_event r
 WHERE r.status = 'PENDING_APPROVAL'
   AND (r.created_at AT TIME ZONE $1)::date BETWEEN $2 AND $3
   AND ($5::text = '' OR r.currency::text = $5)
 GROUP BY 1, 2;

-- The same figures from the raw tables, for the benchmark's baseline and for checks: what a
-- dashboard without roll-ups would run. Same parameters and row shapes as above.

-- name: raw_payment_groups
WITH plans AS (
    SELECT p.plan_id, (p.first_failed_at AT TIME ZONE $1)::date AS day, p.gateway,
           p.currency::text AS currency, p.status, p.amount
      FROM retry_plan p
     WHERE (p.first_failed_at AT TIME ZONE $1)::date BETWEEN $2 AND $3
       AND ($5::text = '' OR p.currency::text = $5)
), first_failure AS (
    SELECT DISTINCT ON (a.plan_id) a.plan_id, a.decline_class
      FROM payment_attempt a JOIN plans USING (plan_id)
     WHERE a.source = 'FAILURE'
     ORDER BY a.plan_id, a.attempt_number
), retries AS (
    SELECT a.plan_id, count(*) AS retries
      FROM payment_attempt a JOIN plans p USING (plan_id)
     WHERE p.status = 'RECOVERED' AND a.source <> 'FAILURE'
       AND a.outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION')
     GROUP BY a.plan_id
), facts AS (
    SELECT (a.attempted_at AT TIME ZONE $1)::date AS day, p.gateway,
           a.retry_of_class AS decline_class, p.currency::text AS currency, 1 AS attempts,
           (a.outcome = 'SUCCEEDED')::int AS successes, 0 AS recovered, 0 AS exhausted,
           0 AS open, 0 AS canceled, 0::bigint AS amount, 0::bigint AS retries
      FROM payment_attempt a
      JOIN retry_plan p ON p.plan_id = a.plan_id
     WHERE a.source <> 'FAILURE' AND a.outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION')
       AND (a.attempted_at AT TIME ZONE $1)::date BETWEEN $2 AND $3
       AND ($5::text = '' OR p.currency::text = $5)
    UNION ALL
    SELECT p.day, p.gateway, coalesce(f.decline_class, ''), p.currency, 0, 0,
           (p.status = 'RECOVERED')::int, (p.status = 'EXHAUSTED')::int,
           (p.status IN ('ACTIVE', 'PAUSED'))::int, (p.status = 'CANCELED')::int,
           CASE WHEN p.status = 'RECOVERED' THEN p.amount ELSE 0 END,
           coalesce(r.retries, 0)
      FROM plans p
      LEFT JOIN first_failure f USING (plan_id)
      LEFT JOIN retries r USING (plan_id)
)
SELECT analytics_group_key($4, day, gateway, decline_class, currency) AS key, currency,
       sum(attempts)::bigint AS retry_attempts, sum(successes)::bigint AS retry_successes,
       sum(recovered)::bigint AS plans_recovered, sum(exhausted)::bigint AS plans_exhausted,
       sum(open)::bigint AS plans_open, sum(canceled)::bigint AS plans_canceled,
       sum(amount)::bigint AS amount_recovered, sum(retries)::bigint AS recovery_retries
  FROM facts
 GROUP BY 1, 2;

-- name: raw_duration_groups
WITH recovered AS (
    SELECT p.plan_id, (p.first_failed_at AT TIME ZONE $1)::date AS day, p.gateway,
           p.currency::text AS currency,
           analytics_seconds(p.first_failed_at, p.updated_at) AS seconds
      FROM retry_plan p
     WHERE p.status = 'RECOVERED'
       AND (p.first_failed_at AT TIME ZONE $1)::date BETWEEN $2 AND $3
       AND ($5::text = '' OR p.currency::text = $5)
), first_failure AS (
    SELECT DISTINCT ON (a.plan_id) a.plan_id, a.decline_class
      FROM payment_attempt a JOIN recovered USING (plan_id)
     WHERE a.source = 'FAILURE'
     ORDER BY a.plan_id, a.attempt_number
), approved AS (
    SELECT (r.created_at AT TIME ZONE $1)::date AS day, p.gateway, r.currency::text AS currency,
           analytics_seconds(r.created_at,
               (array_agg(a.approved_at ORDER BY a.approved_at))[r.required_approvals]) AS seconds
      FROM refund_event r
      JOIN payment p ON p.payment_id = r.payment_id
      JOIN refund_approval a ON a.refund_id = r.refund_id
     WHERE r.required_approvals > 0
       AND (r.created_at AT TIME ZONE $1)::date BETWEEN $2 AND $3
       AND ($5::text = '' OR r.currency::text = $5)
     GROUP BY r.refund_id, p.gateway
    HAVING count(*) >= r.required_approvals
)
SELECT analytics_group_key($4, r.day, r.gateway, coalesce(f.decline_class, ''), r.currency)
           AS key,
       'TIME_TO_RECOVER' AS metric, analytics_bucket(r.seconds) AS bucket, count(*) AS count
  FROM recovered r LEFT JOIN first_failure f USING (plan_id)
 GROUP BY 1, 2, 3
UNION ALL
SELECT analytics_group_key($4, day, gateway, '', currency), 'APPROVAL_LEAD_TIME',
       analytics_bucket(seconds), count(*)
  FROM approved
 GROUP BY 1, 2, 3;

-- name: raw_refund_groups
SELECT analytics_group_key($4, (r.created_at AT TIME ZONE $1)::date, p.gateway, '',
                           r.currency::text) AS key,
       r.status, r.currency::text AS currency, count(*) AS refunds,
       sum(r.amount)::bigint AS amount
  FROM refund_event r
  JOIN payment p ON p.payment_id = r.payment_id
 WHERE (r.created_at AT TIME ZONE $1)::date BETWEEN $2 AND $3
   AND ($5::text = '' OR r.currency::text = $5)
 GROUP BY 1, 2, 3;
