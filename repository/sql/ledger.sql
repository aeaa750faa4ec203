-- name: insert_journal
INSERT INTO journal_entry (kind, payment_id, refund_id, currency, description)
VALUES ($1, $2, $3, $4, $5)
RETURNING journal_id;

-- name: insert_lines
INSERT INTO ledger_line (journal_id, line_no, account, debit, credit)
SELECT $1, line_no, account, debit, credit
  FROM unnest($2::int[], $3::text[], $4::bigint[], $5::bigint[])
       AS l(line_no, account, debit, credit);

-- name: totals
-- Per currency: payments, refunds and the ledger side by side.
SELECT p.currency,
       sum(p.captured_amount)::bigint AS captured,
       sum(p.refunded_amount)::bigint AS refunded,
       sum(p.pending_refund_amount)::bigint AS pending,
       coalesce((SELECT sum(l.debit) FROM ledger_line l JOIN journal_entry j USING (journal_id)
                  WHERE j.currency = p.currency), 0)::bigint AS ledger_debits,
       coalesce((SELECT sum(l.credit) FROM ledger_line l JOIN journal_entry j USING (journal_id)
                  WHERE j.currency = p.currency), 0)::bigint AS ledger_credits
  FROM payment p
 GROUP BY p.currency
 ORDER BY p.currency;

-- name: unbalanced_journals
SELECT j.journal_id::text AS entity_id, j.currency,
       sum(l.debit)::bigint AS expected, sum(l.credit)::bigint AS actual
  FROM journal_entry j JOIN ledger_line l USING (journal_id)
 GROUP BY j.journal_id, j.currency
HAVING sum(l.debit) <> sum(l.credit);

-- name: payment_mismatches
-- Every payment whose counters disagree with its refunds, its items or its ledger entries.
WITH refunds AS (
    SELECT payment_id,
           sum(amount) FILTER (WHERE status = 'SUCCEEDED')::bigint AS settled,
           sum(amount) FILTER (WHERE status IN ('PENDING_APPROVAL', 'APPROVED', 'PROCESSING',
                                                'REQUIRES_ACTION'))::bigint AS reserved
      FROM refund_event GROUP BY payment_id
), items AS (
    SELECT payment_id, sum(amount + tax)::bigint AS gross,
           sum(refunded_amount + refunded_tax)::bigint AS refunded,
           sum(pending_amount + pending_tax)::bigint AS pending
      FROM billing_event_item GROUP BY payment_id
), ledger AS (
    SELECT j.payment_id,
           sum(l.debit) FILTER (WHERE j.kind = 'capture'
                                AND l.account LIKE 'gateway_clearing:%')::bigint AS captured,
           sum(l.credit) FILTER (WHERE j.kind = 'refund'
                                 AND l.account LIKE 'gateway_clearing:%')::bigint AS refunded
      FROM journal_entry j JOIN ledger_line l USING (journal_id)
     GROUP BY j.payment_id
)
SELECT p.payment_id, p.currency, c.check_name, c.expected, c.actual
  FROM payment p
  LEFT JOIN refunds r USING (payment_id)
  LEFT JOIN items i USING (payment_id)
  LEFT JOIN ledger g USING (payment_id)
 CROSS JOIN LATERAL (VALUES
       ('refunded equals settled refunds', coalesce(r.settled, 0), p.refunded_amount),
       ('pending equals refunds in progress', coalesce(r.reserved, 0), p.pending_refund_amount),
       ('captured equals items', p.captured_amount, coalesce(i.gross, 0)),
       ('refunded equals refunded items', p.refunded_amount, coalesce(i.refunded, 0)),
       ('pending equals pending items', p.pending_refund_amount, coalesce(i.pending, 0)),
       ('captured equals ledger captures', p.captured_amount, coalesce(g.captured, 0)),
       ('refunded equals ledger refunds', p.refunded_amount, coalesce(g.refunded, 0))
 ) AS c(check_name, expected, actual)
 WHERE c.expected <> c.actual
 ORDER BY p.payment_id, c.check_name
 LIMIT 1000;
