-- name: last_paid
-- The subscription's last paid period: its payment whose service period ends last; when no
-- payment of it has a service period, the one captured last.
SELECT p.*
  FROM payment p
  LEFT JOIN LATERAL (
      SELECT max(i.service_period_end) AS period_end
        FROM billing_event_item i
       WHERE i.payment_id = p.payment_id
  ) items ON true
 WHERE p.subscription_id = $1 AND $1 <> ''
 ORDER BY items.period_end DESC NULLS LAST, p.captured_at DESC, p.payment_id DESC
 LIMIT 1;
