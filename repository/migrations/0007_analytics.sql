-- Analytics: daily roll-ups per time zone, kept current by a periodic fold
-- (service/analytics.py explains the design; repository/sql/analytics.sql has the fold).
--
-- Writers only append to change logs here. Statement-level triggers copy what a statement
-- changed (from its transition tables) into the logs; a log row is never updated, so writers
-- never wait on one another. (A trigger that added to a per-day total would make every
-- writer of that day queue on one row lock until it commits: with the billing job writing
-- thousands of attempts a second, that serialises the job.) The fold deletes the log rows its
-- snapshot sees and adds them to the roll-ups in the same transaction: a row of a transaction
-- still running is invisible to it, stays, and is folded by a later run once committed, so
-- the order in which transactions commit never makes the fold skip or repeat a change.

-- Attempts: the change itself. A counted attempt (a retry that reached the issuer) adds +1 in
-- its new form and -1 in its old form; attempts are many, and their figures need nothing but
-- the row and its plan's gateway and currency (which never change: see the guard below).
CREATE TABLE analytics_attempt_change (
    plan_id          uuid NOT NULL,
    attempted_at     timestamptz NOT NULL,
    retry_of_class   text NOT NULL,
    succeeded        boolean NOT NULL,
    sign             smallint NOT NULL CHECK (sign IN (-1, 1))
);
-- Plans and refunds: only which one changed. Their figures come from several rows (a plan's
-- first failure and its attempts, a refund's approvals and payment), so the fold recomputes
-- each changed one and keeps what it counted in a fact row, to take it back out next time.
CREATE TABLE analytics_plan_change (plan_id uuid NOT NULL);
CREATE TABLE analytics_refund_change (refund_id uuid NOT NULL);

-- Whole seconds from one instant to a later one (0 when it is not later; NULL when either
-- is NULL, e.g. a refund without its last approval).
CREATE FUNCTION analytics_seconds(start_at timestamptz, end_at timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT greatest(floor(extract(epoch FROM end_at) - extract(epoch FROM start_at)), 0)::bigint
$$;

-- The histogram bucket of a duration: its lower bound in seconds. Exact below 64 s; above,
-- the value rounded down to its 6 most significant bits (32 buckets per doubling), so a
-- bucket's lower bound is less than 1/32 (3.1 %) below any value in it. Must equal
-- service/domain/analytics.py bucket_floor (a test compares them).
CREATE FUNCTION analytics_bucket(seconds bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN seconds < 64 THEN greatest(seconds, 0)
                ELSE (seconds >> (59 - position('1' IN seconds::bit(64)::text)))
                     << (59 - position('1' IN seconds::bit(64)::text)) END
$$;

CREATE FUNCTION analytics_attempts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO analytics_attempt_change (plan_id, attempted_at, retry_of_class, succeeded, sign)
        SELECT plan_id, attempted_at, retry_of_class, outcome = 'SUCCEEDED', -1
          FROM old_attempts
         WHERE source <> 'FAILURE' AND outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION');
        -- A plan's figures read its first failure and its counted retries.
        INSERT INTO analytics_plan_change (plan_id)
        SELECT DISTINCT plan_id FROM old_attempts
         WHERE source = 'FAILURE' OR outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION');
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO analytics_attempt_change (plan_id, attempted_at, retry_of_class, succeeded, sign)
        SELECT plan_id, attempted_at, retry_of_class, outcome = 'SUCCEEDED', 1
          FROM new_attempts
         WHERE source <> 'FAILURE' AND outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION');
        INSERT INTO analytics_plan_change (plan_id)
        SELECT DISTINCT plan_id FROM new_attempts
         WHERE source = 'FAILURE' OR outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER analytics_attempts_inserted AFTER INSERT ON payment_attempt
    REFERENCING NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_attempts_changed();
CREATE TRIGGER analytics_attempts_updated AFTER UPDATE ON payment_attempt
    REFERENCING OLD TABLE AS old_attempts NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_attempts_changed();
CREATE TRIGGER analytics_attempts_deleted AFTER DELETE ON payment_attempt
    REFERENCING OLD TABLE AS old_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_attempts_changed();

-- A plan is logged when something its figures read changed: not for a lease, a decision or
-- an attempt count (the billing job's claims update hundreds of plans per statement).
CREATE FUNCTION analytics_plans_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO analytics_plan_change (plan_id) SELECT plan_id FROM new_plans;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO analytics_plan_change (plan_id) SELECT plan_id FROM old_plans;
    ELSE
        INSERT INTO analytics_plan_change (plan_id)
        SELECT n.plan_id
          FROM new_plans n JOIN old_plans o USING (plan_id)
         WHERE n.status <> o.status OR n.first_failed_at <> o.first_failed_at
            OR n.amount <> o.amount OR (n.status = 'RECOVERED' AND n.updated_at <> o.updated_at);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER analytics_plans_inserted AFTER INSERT ON retry_plan
    REFERENCING NEW TABLE AS new_plans
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_plans_changed();
CREATE TRIGGER analytics_plans_updated AFTER UPDATE ON retry_plan
    REFERENCING OLD TABLE AS old_plans NEW TABLE AS new_plans
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_plans_changed();
CREATE TRIGGER analytics_plans_deleted AFTER DELETE ON retry_plan
    REFERENCING OLD TABLE AS old_plans
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_plans_changed();

CREATE FUNCTION analytics_refunds_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO analytics_refund_change (refund_id) SELECT DISTINCT refund_id FROM old_rows;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO analytics_refund_change (refund_id) SELECT DISTINCT refund_id FROM new_rows;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER analytics_refunds_inserted AFTER INSERT ON refund_event
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_refunds_changed();
CREATE TRIGGER analytics_refunds_updated AFTER UPDATE ON refund_event
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_refunds_changed();
CREATE TRIGGER analytics_refunds_deleted AFTER DELETE ON refund_event
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_refunds_changed();
CREATE TRIGGER analytics_approvals_inserted AFTER INSERT ON refund_approval
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_refunds_changed();
CREATE TRIGGER analytics_approvals_updated AFTER UPDATE ON refund_approval
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_refunds_changed();
CREATE TRIGGER analytics_approvals_deleted AFTER DELETE ON refund_approval
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_refunds_changed();

-- The fold reads a plan's gateway and currency when it folds an attempt, and a payment's
-- gateway when it folds a refund: were they to change, figures folded before would stay
-- under the old values. The service never changes them (a plan's amount is in its
-- currency); this makes it a rule. UPDATE OF + WHEN: no cost to any other update.
CREATE FUNCTION analytics_refuse_rekey() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: gateway and currency are fixed once recorded', TG_TABLE_NAME
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER retry_plan_fixed_keys BEFORE UPDATE OF gateway, currency ON retry_plan
    FOR EACH ROW WHEN (OLD.gateway IS DISTINCT FROM NEW.gateway
                       OR OLD.currency IS DISTINCT FROM NEW.currency)
    EXECUTE FUNCTION analytics_refuse_rekey();
CREATE TRIGGER payment_fixed_keys BEFORE UPDATE OF gateway, currency ON payment
    FOR EACH ROW WHEN (OLD.gateway IS DISTINCT FROM NEW.gateway
                       OR OLD.currency IS DISTINCT FROM NEW.currency)
    EXECUTE FUNCTION analytics_refuse_rekey();

-- A plan's figures, computed from the raw rows. Cohort: the plan's first failure.
-- outcome: OPEN (ACTIVE or PAUSED), RECOVERED, EXHAUSTED or CANCELED.
-- decline_class: the class of the plan's first FAILURE attempt ('' without one).
-- retries: for a RECOVERED plan, its retry attempts that reached the issuer.
-- recover_seconds: for a RECOVERED plan, first failure -> the moment it was marked RECOVERED
-- (its updated_at: no statement updates a plan once it is RECOVERED).
CREATE VIEW analytics_plan_source AS
SELECT p.plan_id, p.first_failed_at, p.gateway,
       coalesce((SELECT a.decline_class FROM payment_attempt a
                  WHERE a.plan_id = p.plan_id AND a.source = 'FAILURE'
                  ORDER BY a.attempt_number LIMIT 1), '') AS decline_class,
       p.currency,
       CASE WHEN p.status IN ('ACTIVE', 'PAUSED') THEN 'OPEN' ELSE p.status END AS outcome,
       p.amount,
       CASE WHEN p.status = 'RECOVERED'
            THEN (SELECT count(*) FROM payment_attempt a
                   WHERE a.plan_id = p.plan_id AND a.source <> 'FAILURE'
                     AND a.outcome IN ('SUCCEEDED', 'DECLINED', 'REQUIRES_ACTION'))
            ELSE 0 END AS retries,
       CASE WHEN p.status = 'RECOVERED' THEN analytics_seconds(p.first_failed_at, p.updated_at)
            END AS recover_seconds
  FROM retry_plan p;

-- A refund's figures. Cohort: the request (created_at). gateway: its payment's.
-- approval_seconds: for a refund that needed people's approval (required_approvals > 0) and
-- has it, request -> the approval that completed it (the required_approvals-th in time).
CREATE VIEW analytics_refund_source AS
SELECT r.refund_id, r.created_at, p.gateway, r.currency, r.status, r.amount,
       CASE WHEN r.required_approvals > 0 THEN
           analytics_seconds(r.created_at,
               (SELECT (array_agg(a.approved_at ORDER BY a.approved_at))[r.required_approvals]
                  FROM refund_approval a WHERE a.refund_id = r.refund_id))
       END AS approval_seconds
  FROM refund_event r
  JOIN payment p ON p.payment_id = r.payment_id;

-- What the fold last counted for each plan and refund (the source rows as of that fold).
CREATE TABLE analytics_plan_fact (
    plan_id           uuid PRIMARY KEY,
    first_failed_at   timestamptz NOT NULL,
    gateway           text NOT NULL,
    decline_class     text NOT NULL,
    currency          char(3) NOT NULL,
    outcome           text NOT NULL,
    amount            bigint NOT NULL,
    retries           bigint NOT NULL,
    recover_seconds   bigint
);
CREATE TABLE analytics_refund_fact (
    refund_id          uuid PRIMARY KEY,
    created_at         timestamptz NOT NULL,
    gateway            text NOT NULL,
    currency           char(3) NOT NULL,
    status             text NOT NULL,
    amount             bigint NOT NULL,
    approval_seconds   bigint
);

-- The roll-ups: one row per local day of each rolled-up zone and per gateway, decline class
-- and currency (amounts are never summed across currencies). Retry attempts count on the day
-- of the attempt; plans on the day of their first failure.
CREATE TABLE analytics_payment_day (
    zone               text NOT NULL,
    day                date NOT NULL,
    gateway            text NOT NULL,
    decline_class      text NOT NULL,
    currency           char(3) NOT NULL,
    retry_attempts     bigint NOT NULL DEFAULT 0,
    retry_successes    bigint NOT NULL DEFAULT 0,
    plans_recovered    bigint NOT NULL DEFAULT 0,
    plans_exhausted    bigint NOT NULL DEFAULT 0,
    plans_open         bigint NOT NULL DEFAULT 0,
    plans_canceled     bigint NOT NULL DEFAULT 0,
    amount_recovered   bigint NOT NULL DEFAULT 0,
    recovery_retries   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (zone, day, gateway, decline_class, currency)
);
-- Refunds on the day they were requested, by their current status.
CREATE TABLE analytics_refund_day (
    zone       text NOT NULL,
    day        date NOT NULL,
    gateway    text NOT NULL,
    currency   char(3) NOT NULL,
    status     text NOT NULL,
    refunds    bigint NOT NULL,
    amount     bigint NOT NULL,
    PRIMARY KEY (zone, day, gateway, currency, status)
);
-- Duration histograms (bucket = analytics_bucket of the seconds), mergeable across days:
-- TIME_TO_RECOVER on the plan's cohort day, APPROVAL_LEAD_TIME on the refund's. Kept in the
-- projections the groupings read, so that a query reads about days x buckets rows whatever
-- the number of gateways, classes and currencies: dimension '' (value '') counts every
-- gateway and class together, 'GATEWAY' and 'DECLINE_CLASS' one per value (refunds have no
-- class); each per currency, and for every currency together (currency '').
CREATE TABLE analytics_duration_day (
    zone        text NOT NULL,
    dimension   text NOT NULL CHECK (dimension IN ('', 'GATEWAY', 'DECLINE_CLASS')),
    currency    text NOT NULL,
    day         date NOT NULL,
    metric      text NOT NULL CHECK (metric IN ('TIME_TO_RECOVER', 'APPROVAL_LEAD_TIME')),
    value       text NOT NULL,
    bucket      bigint NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (zone, dimension, currency, day, metric, value, bucket)
);

-- The zones rolled up, and when each was last folded (every change committed before
-- folded_at is in its figures).
CREATE TABLE analytics_zone (
    zone        text PRIMARY KEY,
    added_at    timestamptz NOT NULL DEFAULT now(),
    folded_at   timestamptz NOT NULL
);
-- Set by the first fold, which builds the facts from the raw tables (rows written before
-- this migration included) instead of reading the logs.
CREATE TABLE analytics_state (
    id               int PRIMARY KEY CHECK (id = 1),
    initialized_at   timestamptz
);
INSERT INTO analytics_state VALUES (1, NULL);

-- The group a roll-up row belongs to for GetRecoveryMetrics' group_by.
CREATE FUNCTION analytics_group_key(group_by text, day date, gateway text, decline_class text,
                                    currency text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE group_by WHEN 'DAY' THEN to_char(day, 'YYYY-MM-DD') WHEN 'GATEWAY' THEN gateway
                         WHEN 'DECLINE_CLASS' THEN decline_class ELSE currency END
$$;
