-- The audit trail written a transaction at a time.
--
-- Before: a row trigger chained each audit row: it locked the chain head, hashed the row and
-- UPDATEd the head, once per row. Inside one transaction those updates pile up versions of
-- the one head row that no one can prune until the commit, and each next row's lock walks
-- past all of them: a chunk of the billing job (200 audit rows) spent ~60 us per row there,
-- half of PostgreSQL's time for a retry attempt, all of it holding the lock every writer
-- queues on.
--
-- Now a transaction's rows are written by one call of audit_append_many: the head is locked
-- and updated once, the rows are hashed in a loop and inserted by one statement. The loop
-- spells out audit_row_hash's expression (calling the SQL function from PL/pgSQL costs ~4x
-- as much per row); verify_chain recomputes every row with audit_row_hash itself, so the two
-- cannot drift apart unnoticed (tests/integration/test_audit_and_reconcile.py). The row trigger stays for any other INSERT
-- (a row without its hash is chained as before); a row that arrives with its hash was
-- chained by the function, and any row whose hash or link is wrong is what verify_chain
-- reports, whoever wrote it.
CREATE FUNCTION audit_append_many(actors text[], actions text[], entity_types text[],
                                  entity_ids text[], datas jsonb[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    head audit_chain_head%ROWTYPE;
    occurred timestamptz := now();
    micros text := (extract(epoch FROM occurred) * 1000000)::bigint::text;
    seq bigint;
    h bytea;
    links bytea[];
    hashes bytea[];
    n int := cardinality(actors);
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN NULL;
    END IF;
    IF cardinality(actions) <> n OR cardinality(entity_types) <> n
       OR cardinality(entity_ids) <> n OR cardinality(datas) <> n THEN
        RAISE EXCEPTION 'audit_append_many: arrays of different lengths'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO head FROM audit_chain_head WHERE id = 1 FOR UPDATE;
    seq := head.sequence;
    h := head.last_hash;
    FOR i IN 1 .. n LOOP
        links[i] := h;
        seq := seq + 1;
        h := sha256(h || convert_to(
            seq::text || E'\x1f' || micros || E'\x1f' || actors[i] || E'\x1f' || actions[i]
            || E'\x1f' || entity_types[i] || E'\x1f' || entity_ids[i] || E'\x1f'
            || datas[i]::text, 'UTF8'));
        hashes[i] := h;
    END LOOP;
    INSERT INTO audit_event (sequence, occurred_at, actor, action, entity_type, entity_id, data,
                             previous_hash, hash)
    SELECT head.sequence + r.n, occurred, r.actor, r.action, r.entity_type, r.entity_id, r.data,
           r.link, r.hash
      FROM unnest(actors, actions, entity_types, entity_ids, datas, links, hashes)
               WITH ORDINALITY AS r(actor, action, entity_type, entity_id, data, link, hash, n);
    UPDATE audit_chain_head SET sequence = seq, last_hash = h WHERE id = 1;
    RETURN seq;
END $$;

DROP TRIGGER audit_event_chain ON audit_event;
CREATE TRIGGER audit_event_chain BEFORE INSERT ON audit_event
    FOR EACH ROW WHEN (NEW.hash IS NULL) EXECUTE FUNCTION audit_event_chain();
