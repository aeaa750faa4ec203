-- What RecordPaymentFailure asks before it starts a plan: was this payment (or its billing
-- event) paid already? The consumers of payment.failed and payment.succeeded read independent
-- queues, so a failure can be handled after the payment that settled it; a plan started then
-- would charge the customer a second time. Paid means a payment recorded with that id or
-- billing event (RecordPayment, payment.succeeded), or a plan of it RECOVERED (by a retry
-- that the gateway approved). Both lookups by index: the payment's billing event, and the
-- recovered plans by payment (retry_plan_billing_event_idx has the plans by billing event).
CREATE INDEX payment_billing_event_idx ON payment (billing_event_id) WHERE billing_event_id <> '';
CREATE INDEX retry_plan_recovered_idx ON retry_plan (payment_id) WHERE status = 'RECOVERED';
