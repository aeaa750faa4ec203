// A billing system that is not written in Python: publishes the events the refund-retry service
// consumes, as canonical proto3 JSON built by hand (no generated code), with the npm `amqplib`.
// The contract is protos/refundretry/v1/billing_events.proto; README "Events" describes it.
//
//   node tests/node/publish.js AMQP_URL EXCHANGE '{"paymentId": ..., ...}'
//
// Publishes payment.succeeded, payment.failed and subscription.cancelled (persistent, with the
// `type` property, message_id = event id) on a confirm channel, waits for the broker's
// confirms, and prints the event ids it published as one JSON line.
'use strict';

const amqp = require('amqplib');

function money(minorUnits) {
  // int64 is a JSON string in the canonical mapping.
  return { currencyCode: 'USD', minorUnits: String(minorUnits) };
}

function events(p) {
  const now = new Date().toISOString();
  return [
    [
      'payment.succeeded',
      {
        eventId: `${p.runId}-paid`,
        occurTime: now,
        payment: {
          paymentId: p.paymentId,
          gateway: 'sandbox',
          gatewayTransactionId: `pi_${p.runId}`,
          customerId: 'cus_node',
          subscriptionId: p.subscriptionId,
          billingEventId: `be_${p.runId}`,
          capturedAmount: money(9900),
          captureTime: p.periodStart,
          items: [
            {
              itemId: 'pro-plan',
              description: 'Pro plan',
              amount: money(9000),
              tax: money(900),
              servicePeriodStart: p.periodStart,
              servicePeriodEnd: p.periodEnd,
            },
          ],
        },
      },
    ],
    [
      'payment.failed',
      {
        eventId: `${p.runId}-failed`,
        occurTime: now,
        paymentId: p.failedPaymentId,
        customerId: 'cus_node',
        amount: money(4900),
        gateway: 'sandbox',
        paymentMethod: { paymentMethodId: 'pm_node_visa', network: 'VISA' },
        decline: { declineCode: 'insufficient_funds', visaResponseCode: '51' },
        failureTime: now,
        timeZone: 'America/New_York',
      },
    ],
    [
      'subscription.cancelled',
      {
        eventId: `${p.runId}-cancelled`,
        occurTime: now,
        subscriptionId: p.subscriptionId,
        customerId: 'cus_node',
        cancelTime: p.cancelTime,
        refundPolicy: 'CANCELLATION_REFUND_POLICY_PRORATED',
        // Named, so that a cancellation handled before the payment.succeeded above (another
        // queue) is retried until the payment is recorded.
        paymentId: p.paymentId,
        reason: 'moved to a competitor',
      },
    ],
  ];
}

async function main() {
  const [url, exchange, paramsJson] = process.argv.slice(2);
  if (!url || !exchange || !paramsJson) {
    console.error('usage: node tests/node/publish.js AMQP_URL EXCHANGE PARAMS_JSON');
    process.exit(2);
  }
  const params = JSON.parse(paramsJson);
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    await channel.assertExchange(exchange, 'topic', { durable: true });
    const published = [];
    for (const [type, event] of events(params)) {
      channel.publish(exchange, type, Buffer.from(JSON.stringify(event)), {
        contentType: 'application/json',
        type,
        messageId: event.eventId,
        persistent: true,
        timestamp: Math.floor(Date.now() / 1000),
        appId: 'billing-node',
      });
      published.push(event.eventId);
    }
    await channel.waitForConfirms();
    await channel.close();
    console.log(JSON.stringify({ published }));
  } finally {
    await connection.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
