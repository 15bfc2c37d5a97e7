// The reference the module's webhook is measured against: what an
// integrator writes with Stripe's own library.  It verifies the
// signature with stripe.webhooks.constructEvent and records the
// invoice's status in Redis with one HSET (no ordering rules, no
// subscription: it does less than the module).
//
//   node webhook.js PORT REDIS_PORT SECRET

'use strict';

const http = require('http');
const Stripe = require('stripe');
const { createClient } = require('redis');

const [port, redisPort, secret] = process.argv.slice(2);
const stripe = new Stripe('sk_test_reference');
const redis = createClient({ url: `redis://127.0.0.1:${redisPort}` });

const statuses = {
  'invoice.finalized': 'open',
  'invoice.paid': 'paid',
  'invoice.voided': 'void',
  'invoice.marked_uncollectible': 'uncollectible',
};

function answer(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body) + '\n');
}

const server = http.createServer((req, res) => {
  const chunks = [];

  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    let event;

    try {
      event = stripe.webhooks.constructEvent(Buffer.concat(chunks),
        req.headers['stripe-signature'], secret, 300);
    } catch (err) {
      return answer(res, 400, { error: { code: 'invalid_signature' } });
    }

    const status = statuses[event.type];

    if (!status) {
      return answer(res, 200, { received: true, ignored: true });
    }

    try {
      await redis.hSet(`billing:invoice:${event.data.object.id}`,
        { status, event: event.id });
    } catch (err) {
      return answer(res, 503, { error: { code: 'billing_unavailable' } });
    }

    return answer(res, 200, { received: true });
  });
});

redis.connect().then(() => server.listen(port, '127.0.0.1'));
