-- A plan's wallet as the billing job reads it with every plan it claims or locks: the ids and
-- networks of its payment methods, in wallet order (empty arrays for an empty wallet). One
-- definition for the queries that need it (retries.claim_due, retries.leased_plans). A SQL
-- function returning a set, STABLE and not STRICT, is inlined into the calling query as a
-- subquery, so each plan's wallet is still one index lookup on plan_payment_method.
CREATE FUNCTION plan_wallet(plan uuid)
RETURNS TABLE (wallet_ids text[], wallet_networks text[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(m.payment_method_id ORDER BY m.position), '{}'),
           coalesce(array_agg(m.network ORDER BY m.position), '{}')
      FROM plan_payment_method m
     WHERE m.plan_id = plan
$$;
