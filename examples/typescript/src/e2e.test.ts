// npm test: runs the demo end to end against a real Mandate and checks what each side saw.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runDemo } from './demo.js';

test('the demo: grants, no grant, a revoked grant, and what each side saw', async () => {
  const lines: string[] = [];
  const { steps, seen, audit } = await runDemo((l) => lines.push(l));
  const by = (user: string, tool: string, order?: string) =>
    steps.find((s) => s.user === user && s.tool === tool && (order === undefined || s.args.order_id === order));

  const a1 = by('alice', 'get_order_status', 'A-1001');
  assert.ok(a1?.ok, a1?.text);
  assert.deepEqual(JSON.parse(a1.text), { order_id: 'A-1001', status: 'shipped', user: 'alice' });
  assert.ok(by('alice', 'get_balance')?.ok);
  assert.ok(by('bob', 'get_order_status', 'B-2001')?.ok);
  // Bob cannot see alice's order: the API answers for the token's user only.
  assert.match(by('bob', 'get_order_status', 'A-1001')?.text ?? '', /HTTP 404/);
  assert.match(by('bob', 'get_balance')?.text ?? '', /billing_api: grant_does_not_cover_audience_or_mode/);
  assert.match(by('carol', 'get_order_status', 'C-3001')?.text ?? '', /orders_api: no_active_grant/);
  const revoked = by('alice', 'get_order_status', 'A-1002');
  assert.equal(revoked?.ok, false);
  assert.match(revoked?.text ?? '', /no_active_grant/);

  // The APIs saw the user, the agent and the trace of the call that reached them.
  assert.ok(seen.length >= 4);
  for (const s of seen) {
    assert.equal(s.principal.actorType, 'user');
    assert.equal(s.principal.agent?.sub, 'support-agent');
    assert.equal(s.principal.mode, 'on_behalf_of');
  }
  const aliceOrders = seen.find((s) => s.api === 'orders_api' && s.principal.user === 'alice');
  assert.equal(aliceOrders?.principal.traceId, a1.traceId);
  assert.match(aliceOrders?.traceparent ?? '', new RegExp(`^00-${a1.traceId}-[0-9a-f]{16}-01$`));

  // Mandate's audit trail has every decision with its reason.
  const reasons = audit.map((r) => `${r.outcome}:${r.actor_sub}:${r.audience}:${r.reason}`);
  assert.ok(reasons.includes('granted:alice:orders_api:granted'), reasons.join('\n'));
  assert.ok(reasons.includes('denied:bob:billing_api:grant_does_not_cover_audience_or_mode'));
  assert.ok(reasons.includes('denied:carol:orders_api:no_active_grant'));
  assert.ok(audit.some((r) => r.trace_id === a1.traceId));
  assert.ok(lines.some((l) => l.includes('Mandate audit trail')));
});
