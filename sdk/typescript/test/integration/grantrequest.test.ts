// Turning "no grant" into "ask the user" against a real Mandate: the refusal names the grant
// request endpoint, the delegator creates the request with each client authentication method, an
// admin approves it over /admin/v1 (the access-request workflow; no sign-in provider needed), the
// status is polled at Mandate's interval, and the next exchange is issued under the new grant.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { decodeJwt, type JWK } from 'jose';
import { Delegator, type Identity } from '../../src/delegator/index.js';
import { createSigner, type EnvelopeKeyPair, generateEnvelopeKey } from '../../src/envelope/index.js';
import {
  ClientError,
  GrantRequiredError,
  grantRequired,
  type MandateError,
  UnavailableError,
} from '../../src/errors/index.js';
import { freePort, type RunningMandate, repoRoot, startMandate } from '../helpers/mandate.js';
import { AGENT, type Provisioned, provision, TENANT } from '../helpers/provision.js';

const CLIENT = 'ts-ask';
const DOCS = 'docs_api';
let m: RunningMandate;
let keys: EnvelopeKeyPair;
let prov: Provisioned;
const seenReasons = new Set<string>();

/** Every call the delegators send, so a test can say how they polled. */
const sent: { method: string; url: string; basic: boolean; body: string }[] = [];
const recordingFetch: typeof fetch = (input, init) => {
  sent.push({
    method: init?.method ?? 'GET',
    url: String(input),
    basic: new Headers(init?.headers).get('authorization')?.startsWith('Basic ') ?? false,
    body: typeof init?.body === 'string' ? init.body : '',
  });
  return fetch(input, init);
};

const who = (sub: string, clientId = CLIENT, agent = AGENT): Identity => ({
  actor: { type: 'user', sub, tenant: TENANT },
  agent: { type: 'mcp_agent', id: agent, client_id: clientId },
  session: { id: `sess-${sub}`, trace_id: '4bf92f3577b34da6a3ce929d0e0e4736' },
  scopes: ['docs:read', 'orders:read'],
  mode: 'on_behalf_of',
});

function delegator(clientId = CLIENT, clientAuth?: ConstructorParameters<typeof Delegator>[0]['clientAuth']) {
  return new Delegator({
    issuer: m.issuer,
    clientId,
    clientAuth: clientAuth ?? { method: 'client_secret_basic', clientSecret: prov.mcpSecret },
    signer: createSigner({ key: keys.privateJwk, clientId, issuer: m.issuer }),
    audiences: {
      [DOCS]: { baseUrls: ['http://127.0.0.1:1/'], scopes: ['docs:read'] },
      orders_api: { baseUrls: ['http://127.0.0.1:1/'], scopes: ['orders:read'] },
    },
    fetch: recordingFetch,
  });
}

function refusal<T extends MandateError>(cls: new (...a: never[]) => T, reason: string, status = 400) {
  return (e: unknown) => {
    assert.ok(e instanceof cls, `want ${cls.name}, got ${String(e)}`);
    assert.equal(e.reason, reason, e.message);
    assert.equal(e.status, status);
    seenReasons.add(reason);
    return true;
  };
}

interface AdminGrantRequest {
  id: string;
  client_id: string;
  tenant: string;
  subject: string;
  agent_id?: string;
  audiences: string[];
  scopes: string[];
  duration: number;
  purpose?: string;
  status: string;
}

before(async () => {
  m = await startMandate();
  keys = await generateEnvelopeKey();
  // orders_api keeps the default user_consent (admin_only); bob has a grant for it alone.
  prov = await provision(m, { clientId: CLIENT, jwks: keys.publicJwks, users: { bob: ['orders_api'] } });
  await m.admin('POST', '/audiences', {
    id: DOCS,
    name: 'Docs API',
    scopes: ['docs:read', 'docs:write'],
    allowed_modes: ['on_behalf_of'],
    user_consent: 'allowed',
    max_consent_duration: 3600,
  });
});

after(async () => {
  await m?.stop();
});

test('no grant on an audience users may consent to: the refusal names the grant request endpoint', async () => {
  const d = delegator();
  await assert.rejects(d.token(who('carol'), DOCS), (e: unknown) => {
    refusal(GrantRequiredError, 'no_active_grant')(e);
    const g = e as GrantRequiredError;
    assert.equal(g.grantRequestEndpoint, `${m.issuer}/oauth2/grant-requests`);
    assert.equal(grantRequired(e), g);
    return true;
  });
  // bob has a grant, but not for the docs: the user can still widen it.
  await assert.rejects(d.token(who('bob'), DOCS), (e: unknown) => {
    refusal(GrantRequiredError, 'grant_does_not_cover_audience_or_mode')(e);
    assert.equal(grantRequired(e), e);
    return true;
  });
  // orders_api is admin_only: still a GrantRequiredError, but nobody to ask but an admin.
  await assert.rejects(d.token(who('carol'), 'orders_api'), (e: unknown) => {
    refusal(GrantRequiredError, 'no_active_grant')(e);
    assert.equal((e as GrantRequiredError).grantRequestEndpoint, undefined);
    assert.equal(grantRequired(e), undefined);
    return true;
  });
  assert.equal(grantRequired(new Error('no_active_grant')), undefined);
});

/** Asks for docs:read for user, approves it as the admin, and checks every step on the way. */
async function askApproveExchange(d: Delegator, user: string, clientId: string) {
  const id = who(user, clientId);
  const refused = await d.token(id, DOCS).then(
    () => assert.fail('exchanged without a grant'),
    (e: unknown) => grantRequired(e),
  );
  assert.ok(refused, 'a refusal the user can lift');
  const before = Math.floor(Date.now() / 1000);
  const link = await d.requestGrant(id, {
    audiences: [DOCS],
    scopes: ['docs:read'],
    duration: 1800,
    purpose: 'Summarise your documents',
  });
  assert.match(link.requestId, /^gr_/);
  assert.equal(link.url, `${m.issuer}/consent/${link.requestId}`);
  assert.equal(link.verificationUri, `${m.issuer}/consent`);
  assert.equal(link.interval, 5);
  assert.ok(link.expiresAt > before + 60 && link.expiresAt <= before + 601, String(link.expiresAt - before));

  const pending = await d.grantRequestStatus(link.requestId);
  assert.equal(pending.requestId, link.requestId);
  assert.equal(pending.status, 'pending');
  assert.equal(pending.grantId, undefined);
  assert.equal(pending.interval, 5);
  assert.ok(pending.expiresAt !== undefined && Math.abs(pending.expiresAt - link.expiresAt) <= 2);

  const stored = await m.admin<AdminGrantRequest>('GET', `/grant-requests/${link.requestId}`);
  assert.equal(stored.client_id, clientId);
  assert.equal(stored.tenant, TENANT);
  assert.equal(stored.subject, user);
  assert.equal(stored.agent_id, AGENT);
  assert.deepEqual(stored.audiences, [DOCS]);
  assert.deepEqual(stored.scopes, ['docs:read']);
  assert.equal(stored.duration, 1800);
  assert.equal(stored.purpose, 'Summarise your documents');

  const decided = await m.admin<{ request: { status: string; grant_id: string } }>(
    'POST',
    `/grant-requests/${link.requestId}/approve`,
  );
  assert.equal(decided.request.status, 'approved');
  const approved = await d.grantRequestStatus(link.requestId);
  assert.equal(approved.status, 'approved');
  assert.equal(approved.grantId, decided.request.grant_id);
  assert.equal(approved.interval, undefined, 'no interval once decided');

  const grant = await m.admin<{ subject: string; agent_id?: string; created_by: string }>(
    'GET',
    `/grants/${approved.grantId}`,
  );
  assert.deepEqual([grant.subject, grant.agent_id, grant.created_by], [user, AGENT, 'admin:mandate-admin']);
  const tok = decodeJwt(await d.token(id, DOCS));
  assert.equal(tok.sub, user);
  assert.equal(tok.grant_id, approved.grantId);
  assert.equal(tok.scope, 'docs:read');
  return link;
}

test('ask, approve as an admin, poll, and the next exchange succeeds (client_secret_basic)', async () => {
  sent.length = 0;
  const link = await askApproveExchange(delegator(), 'erin', CLIENT);
  const create = sent.find((s) => s.url === `${m.issuer}/oauth2/grant-requests`);
  assert.ok(create?.basic && create.method === 'POST', 'created with Basic');
  assert.deepEqual(
    Object.keys(JSON.parse(create.body) as object).sort(),
    ['agent_id', 'audiences', 'duration', 'purpose', 'scopes', 'subject', 'tenant'],
    'no credentials in the body',
  );
  const polls = sent.filter((s) => s.url === `${m.issuer}/oauth2/grant-requests/${link.requestId}`);
  assert.ok(polls.length >= 2 && polls.every((p) => p.method === 'GET' && p.basic && p.body === ''));
});

test('client_secret_post and private_key_jwt: created and polled with the credentials in the body', async () => {
  const post = await provision(m, {
    clientId: 'ts-ask-post',
    jwks: keys.publicJwks,
    authMethod: 'client_secret_post',
    users: {},
  });
  const auth = await generateEnvelopeKey({ kid: 'ask-client-auth-1' });
  await provision(m, {
    clientId: 'ts-ask-pkjwt',
    jwks: { keys: [...(keys.publicJwks.keys as JWK[]), ...(auth.publicJwks.keys as JWK[])] },
    authMethod: 'private_key_jwt',
    users: {},
  });
  for (const [clientId, clientAuth, member] of [
    ['ts-ask-post', { method: 'client_secret_post', clientSecret: post.mcpSecret }, 'client_secret'],
    ['ts-ask-pkjwt', { method: 'private_key_jwt', key: auth.privateJwk }, 'client_assertion'],
  ] as const) {
    sent.length = 0;
    const link = await askApproveExchange(delegator(clientId, clientAuth), 'erin', clientId);
    const create = sent.find((s) => s.url === `${m.issuer}/oauth2/grant-requests`);
    assert.ok(create && !create.basic && member in (JSON.parse(create.body) as object), clientId);
    const polls = sent.filter((s) => s.url.endsWith(`/oauth2/grant-requests/${link.requestId}`));
    assert.ok(polls.length >= 2, clientId);
    for (const p of polls) {
      assert.equal(p.method, 'POST', clientId);
      assert.equal(new URLSearchParams(p.body).get('client_id'), clientId);
      assert.ok(new URLSearchParams(p.body).has(member), clientId);
    }
  }
});

test('anyAgent asks for every agent of the client', async () => {
  const d = delegator();
  const link = await d.requestGrant(who('gina'), {
    audiences: [DOCS],
    scopes: ['docs:read'],
    purpose: 'Any of our agents',
    anyAgent: true,
  });
  const stored = await m.admin<AdminGrantRequest>('GET', `/grant-requests/${link.requestId}`);
  assert.equal(stored.agent_id ?? '', '');
  assert.equal(stored.duration, 3600, "without a duration, the audience's max_consent_duration");
  await m.admin('POST', `/grant-requests/${link.requestId}/approve`);
  const other = decodeJwt(await d.token(who('gina', CLIENT, 'another-agent'), DOCS));
  assert.deepEqual(other.act, { sub: 'another-agent', client_id: CLIENT });
});

test("waitForGrant polls at Mandate's interval until the request is decided", async () => {
  const d = delegator();
  const ask = { audiences: [DOCS], scopes: ['docs:read'], purpose: 'wait' };
  const [yes, no] = [await d.requestGrant(who('hana'), ask), await d.requestGrant(who('ivan'), ask)];
  sent.length = 0;
  const started = Date.now();
  const waiting = Promise.all([d.waitForGrant(yes), d.waitForGrant(no.requestId)]);
  await m.admin('POST', `/grant-requests/${yes.requestId}/approve`);
  await m.admin('POST', `/grant-requests/${no.requestId}/deny`);
  const [approved, denied] = await waiting;
  const elapsed = Date.now() - started;
  assert.equal(approved.status, 'approved');
  assert.ok(approved.grantId);
  assert.equal(denied.status, 'denied');
  assert.equal(denied.grantId, undefined);
  // The first read waits one interval: never sooner.
  assert.ok(elapsed >= yes.interval * 1000, `polled after ${elapsed} ms`);
  assert.equal(sent.length, 2, 'one read each');
  // A pending request keeps it waiting; the caller's signal ends the wait.
  const pending = await d.requestGrant(who('jade'), ask);
  await assert.rejects(d.waitForGrant(pending, { signal: AbortSignal.timeout(50) }), {
    name: 'TimeoutError',
  });
  assert.equal((await d.grantRequestStatus(pending.requestId)).status, 'pending');
});

test("Mandate's refusals of a grant request are typed by reason", async () => {
  const d = delegator();
  const ask = { audiences: [DOCS], scopes: ['docs:read'], purpose: 'refusals' };
  await assert.rejects(
    d.requestGrant(who('kim'), { ...ask, audiences: ['orders_api'], scopes: ['orders:read'] }),
    (e: unknown) => {
      refusal(ClientError, 'audience_requires_admin_consent')(e);
      const c = e as ClientError;
      assert.equal(c.code, 'invalid_target');
      assert.equal(c.kind, 'client_error');
      assert.match(
        c.message,
        /^Mandate refused a grant request for orders_api: audience_requires_admin_consent/,
      );
      return true;
    },
  );
  await assert.rejects(
    d.requestGrant(who('kim'), { ...ask, duration: 7200 }),
    refusal(ClientError, 'consent_duration_too_long'),
  );
  await assert.rejects(
    d.requestGrant(who('kim'), { ...ask, scopes: [] }),
    refusal(ClientError, 'invalid_grant_request'),
  );
  // A scope no grant could hold: asking the user cannot help.
  await assert.rejects(d.requestGrant(who('kim'), { ...ask, scopes: ['orders:read'] }), (e: unknown) => {
    refusal(ClientError, 'scope_not_requestable')(e);
    assert.equal((e as ClientError).kind, 'client_error');
    return true;
  });
  await assert.rejects(
    d.requestGrant(who('kim'), { ...ask, audiences: ['nope_api'] }),
    refusal(ClientError, 'unknown_audience'),
  );
  await assert.rejects(
    d.requestGrant({ ...who('kim'), actor: { type: 'user', sub: 'kim', tenant: 'globex' } }, ask),
    refusal(ClientError, 'tenant_not_allowed'),
  );
  await assert.rejects(
    d.grantRequestStatus('gr_does_not_exist'),
    refusal(ClientError, 'grant_request_not_found', 404),
  );
  // Another client's request reads as not found.
  const other = await provision(m, { clientId: 'ts-ask-other', jwks: keys.publicJwks, users: {} });
  const theirs = await delegator('ts-ask-other', {
    method: 'client_secret_basic',
    clientSecret: other.mcpSecret,
  }).requestGrant(who('kim', 'ts-ask-other'), ask);
  await assert.rejects(
    d.grantRequestStatus(theirs.requestId),
    refusal(ClientError, 'grant_request_not_found', 404),
  );
  const wrong = delegator(CLIENT, { method: 'client_secret_basic', clientSecret: 'wrong' });
  await assert.rejects(
    wrong.requestGrant(who('kim'), ask),
    refusal(ClientError, 'client_authentication_failed', 401),
  );
  await assert.rejects(
    wrong.grantRequestStatus(theirs.requestId),
    refusal(ClientError, 'client_authentication_failed', 401),
  );
  // Caught before anything is sent.
  await assert.rejects(d.requestGrant(who('kim'), { ...ask, duration: 1.5 }), TypeError);
  await assert.rejects(
    d.requestGrant({ ...who('kim'), expiresAt: Math.floor(Date.now() / 1000) - 1 }, ask),
    (e: unknown) => e instanceof ClientError && e.code === 'identity_expired',
  );
  await assert.rejects(d.grantRequestStatus(''), TypeError);
  // Nothing listening: unavailable.
  const port = await freePort();
  const down = new Delegator({
    issuer: `http://127.0.0.1:${port}`,
    clientId: CLIENT,
    clientAuth: { method: 'client_secret_basic', clientSecret: prov.mcpSecret },
    signer: createSigner({ key: keys.privateJwk, clientId: CLIENT, issuer: `http://127.0.0.1:${port}` }),
    audiences: {},
  });
  await assert.rejects(
    down.requestGrant(who('kim'), ask),
    (e: unknown) =>
      e instanceof UnavailableError &&
      e.code === 'network_error' &&
      /could not be reached for a grant request for docs_api/.test(e.message),
  );
  // Every reason seen here is one the server documents.
  const documented = new Set(
    (
      JSON.parse(readFileSync(join(repoRoot, 'testdata', 'reasons.json'), 'utf8')) as {
        reasons: { reason: string }[];
      }
    ).reasons.map((r) => r.reason),
  );
  for (const r of seenReasons) assert.ok(documented.has(r), r);
  assert.ok(seenReasons.size >= 9);
});
