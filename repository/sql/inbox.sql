-- name: claim
-- Store a consumed message's id; no row back means it was handled before (a concurrent
-- delivery of the same message waits here until the first one's transaction ends).
INSERT INTO inbox (consumer, event_id, event_type, outcome, note, received_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING processed_at;

-- name: get
SELECT * FROM inbox WHERE consumer = $1 AND event_id = $2;
