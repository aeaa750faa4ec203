-- The outbox relay (service/outbox/relay.py) and the WatchEvents feed (service/outbox/feed.py).
-- Rows are written by journal.sql's outbox_add_many.

-- name: unpublished
-- The relay's next batch: unpublished rows after $1, by position (outbox_unpublished_idx).
-- A row that commits after a higher position was published keeps published_at NULL and is
-- found when the relay reads from $1 = 0 again: nothing is skipped.
SELECT position, event_id, event_type, payload, created_at
  FROM outbox
 WHERE published_at IS NULL AND position > $1
 ORDER BY position
 LIMIT $2;

-- name: mark_published
UPDATE outbox SET published_at = now()
 WHERE position = ANY($1::bigint[]) AND published_at IS NULL;

-- name: backlog
SELECT count(*) FROM outbox WHERE published_at IS NULL;

-- name: frontier
-- The WatchEvents feed's frontier (service/outbox/feed.py): from one snapshot, the highest
-- visible position and the oldest transaction still in progress (xmin); then a transaction id
-- of the statement's own, assigned after the snapshot was taken, so larger than the id of
-- every transaction that could still commit a position below top.
SELECT coalesce((SELECT max(position) FROM outbox), 0) AS top,
       pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
       pg_current_xact_id()::text::bigint AS bound;

-- name: read_range
-- Every row in (after, upto], in position order: the feed's live rows.
SELECT position, event_type, customer_id, payment_id, subscription_id, payload
  FROM outbox
 WHERE position > $1 AND position <= $2
 ORDER BY position
 LIMIT $3;

-- name: replay
-- A watcher's history: matching rows in (after, upto], in position order. $3: exact event
-- types, $4: type prefixes (both NULL: every type); $5-$7: ids, NULL for any.
SELECT position, event_type, customer_id, payment_id, subscription_id, payload
  FROM outbox
 WHERE position > $1 AND position <= $2
   AND ($3::text[] IS NULL
        OR event_type = ANY($3::text[])
        OR EXISTS (SELECT 1 FROM unnest($4::text[]) AS p WHERE starts_with(event_type, p)))
   AND ($5::text IS NULL OR customer_id = $5)
   AND ($6::text IS NULL OR payment_id = $6)
   AND ($7::text IS NULL OR subscription_id = $7)
 ORDER BY position
 LIMIT $8;

-- name: prune_published
-- Delete up to $2 events published before $1, the oldest first (outbox_published_idx), and
-- raise pruned_through past them in the same transaction. Unpublished rows are never deleted.
WITH gone AS (
    DELETE FROM outbox
     WHERE position = ANY(ARRAY(
               SELECT position FROM outbox
                WHERE published_at < $1
                ORDER BY published_at
                LIMIT $2))
    RETURNING position
), moved AS (
    UPDATE outbox_retention
       SET pruned_through = greatest(pruned_through, (SELECT max(position) FROM gone)),
           pruned_at = now()
     WHERE id = 1 AND EXISTS (SELECT 1 FROM gone)
    RETURNING pruned_through
)
SELECT (SELECT count(*) FROM gone) AS deleted,
       coalesce((SELECT pruned_through FROM moved),
                (SELECT pruned_through FROM outbox_retention WHERE id = 1)) AS pruned_through;

-- name: pruned_through
SELECT pruned_through FROM outbox_retention WHERE id = 1;
