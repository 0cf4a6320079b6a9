import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  ClientError,
  GrantRequiredError,
  grantRequired,
  kindOf,
  MandateError,
  mandateError,
  parseRetryAfter,
  REASON_KINDS,
  UnavailableError,
} from '../src/errors/index.js';
import { repoRoot } from './helpers/mandate.js';

interface ReasonEntry {
  reason: string;
  kind: string | null;
  status: number;
  error: string | null;
}

test("the SDK's reason table equals testdata/reasons.json", () => {
  const file = JSON.parse(readFileSync(join(repoRoot, 'testdata', 'reasons.json'), 'utf8')) as {
    reasons: ReasonEntry[];
  };
  const want: Record<string, string> = {};
  for (const r of file.reasons) if (r.kind !== null) want[r.reason] = r.kind;
  assert.ok(Object.keys(want).length > 40, 'reasons.json lists the reasons');
  assert.deepEqual({ ...REASON_KINDS }, want);
  // Each reason, answered with its own status, becomes the class of its kind.
  for (const r of file.reasons) {
    if (r.kind === null || r.error === null) continue;
    const e = mandateError({ code: r.error, reason: r.reason, status: r.status, audience: 'a' });
    const cls = {
      grant_required: GrantRequiredError,
      client_error: ClientError,
      unavailable: UnavailableError,
    }[r.kind];
    assert.ok(cls && e instanceof cls, `${r.reason} -> ${r.kind}`);
    assert.ok(e instanceof MandateError);
    assert.equal(e.kind, r.kind);
    assert.equal(e.reason, r.reason);
  }
});

test('fallbacks when reason is missing or unknown', () => {
  assert.equal(kindOf(429, undefined), 'unavailable');
  assert.equal(kindOf(503, 'something_new'), 'unavailable');
  assert.equal(kindOf(500, undefined), 'unavailable');
  assert.equal(kindOf(0, undefined), 'unavailable');
  assert.equal(kindOf(400, undefined), 'client_error');
  assert.equal(kindOf(401, 'something_new'), 'client_error');
  // A known reason wins over the status.
  assert.equal(kindOf(400, 'no_active_grant'), 'grant_required');
  // Inherited object members are not reasons.
  assert.equal(kindOf(400, 'constructor'), 'client_error');
  assert.equal(kindOf(400, '__proto__'), 'client_error');
});

test('error messages name the audience and reason, and carry retryAfter', () => {
  const e = mandateError({
    code: 'temporarily_unavailable',
    reason: 'rate_limited',
    status: 429,
    audience: 'orders_api',
    retryAfter: 7,
    description: 'slow down',
  });
  assert.ok(e instanceof UnavailableError);
  assert.equal(e.retryAfter, 7);
  assert.equal(e.name, 'UnavailableError');
  assert.match(e.message, /orders_api: rate_limited \(slow down\)/);
});

test('Retry-After parsing', () => {
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter('12'), 12);
  assert.equal(parseRetryAfter('soon'), undefined);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now), 30);
});

test('grantRequired: only refusals the user can lift themselves', () => {
  const endpoint = 'https://mandate.test/oauth2/grant-requests';
  const base = { code: 'invalid_request', status: 400, audience: 'docs_api' };
  const e = mandateError({ ...base, reason: 'no_active_grant', grantRequestEndpoint: endpoint });
  assert.ok(e instanceof GrantRequiredError);
  assert.equal(e.grantRequestEndpoint, endpoint);
  assert.equal(grantRequired(e), e);
  const widen = mandateError({
    ...base,
    reason: 'grant_does_not_cover_audience_or_mode',
    grantRequestEndpoint: endpoint,
  });
  assert.equal(grantRequired(widen), widen);
  // No endpoint: the audience is admin_only.
  assert.equal(grantRequired(mandateError({ ...base, reason: 'no_active_grant' })), undefined);
  // A grant refusal a new grant request would not lift as such.
  assert.equal(
    grantRequired(mandateError({ ...base, reason: 'scope_not_allowed', grantRequestEndpoint: endpoint })),
    undefined,
  );
  assert.equal(
    grantRequired(mandateError({ ...base, reason: 'envelope_replayed', grantRequestEndpoint: endpoint })),
    undefined,
  );
  assert.equal(grantRequired('no_active_grant'), undefined);
  assert.equal(grantRequired(undefined), undefined);
});

test('messages name what was refused', () => {
  const e = mandateError({
    code: 'invalid_target',
    reason: 'audience_requires_admin_consent',
    status: 400,
    audience: 'orders_api',
    operation: 'a grant request for orders_api',
    description: 'ask an admin',
  });
  assert.equal(
    e.message,
    'Mandate refused a grant request for orders_api: audience_requires_admin_consent (ask an admin)',
  );
  const n = mandateError({
    code: 'network_error',
    status: 0,
    audience: '',
    operation: 'the status of grant request gr_1',
  });
  assert.equal(n.message, 'Mandate could not be reached for the status of grant request gr_1');
});
