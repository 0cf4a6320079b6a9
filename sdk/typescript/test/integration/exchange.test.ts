// The delegator and the downstream verifier against a real Mandate (the binary built from this
// repository, SQLite in a temporary directory, loopback ports).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { decodeJwt, type JWK } from 'jose';
import { Delegator, type DelegatorOptions, type Identity } from '../../src/delegator/index.js';
import { createVerifier, principalOf, protect, VerificationError } from '../../src/downstream/index.js';
import {
  createSigner,
  type EnvelopeAlgorithm,
  type EnvelopeKeyPair,
  type EnvelopeSigner,
  generateEnvelopeKey,
} from '../../src/envelope/index.js';
import {
  ClientError,
  GrantRequiredError,
  type MandateError,
  REASON_KINDS,
  UnavailableError,
} from '../../src/errors/index.js';
import { freePort, type RunningMandate, repoRoot, startMandate } from '../helpers/mandate.js';
import { AGENT, type Provisioned, provision, TENANT } from '../helpers/provision.js';

let m: RunningMandate;
let keys: EnvelopeKeyPair;
let signer: EnvelopeSigner;
let prov: Provisioned;
const CLIENT = 'ts-mcp';
const seenReasons = new Set<string>();

const who = (sub: string, scopes = ['orders:read', 'balance:read']): Identity => ({
  actor: { type: 'user', sub, tenant: TENANT },
  agent: { type: 'mcp_agent', id: AGENT, client_id: CLIENT },
  session: { id: `sess-${sub}`, trace_id: '4bf92f3577b34da6a3ce929d0e0e4736' },
  scopes,
  mode: 'on_behalf_of',
});

function delegator(extra: Partial<DelegatorOptions> = {}): Delegator {
  return new Delegator({
    issuer: m.issuer,
    clientId: CLIENT,
    clientAuth: { method: 'client_secret_basic', clientSecret: prov.mcpSecret },
    signer,
    audiences: {
      orders_api: { baseUrls: ['http://127.0.0.1:1/'], scopes: ['orders:read'] },
      billing_api: { baseUrls: ['http://127.0.0.1:1/'], scopes: ['balance:read'] },
      nope_api: { baseUrls: ['http://127.0.0.1:1/'] },
    },
    ...extra,
  });
}

/** Checks a refusal's class against the reason table and records the reason as seen. */
function refusal<T extends MandateError>(cls: new (...a: never[]) => T, reason: string) {
  return (e: unknown) => {
    assert.ok(e instanceof cls, `want ${cls.name}, got ${String(e)}`);
    assert.equal(e.reason, reason, e.message);
    assert.equal(e.kind, REASON_KINDS[reason]);
    seenReasons.add(reason);
    return true;
  };
}

before(async () => {
  m = await startMandate();
  keys = await generateEnvelopeKey();
  signer = createSigner({ key: keys.privateJwk, clientId: CLIENT, issuer: m.issuer });
  prov = await provision(m, {
    clientId: CLIENT,
    jwks: keys.publicJwks,
    users: { alice: ['orders_api', 'billing_api'], bob: ['orders_api'], dave: ['orders_api'] },
  });
});

after(async () => {
  await m?.stop();
});

test('granted: a token for alice, for one audience, with the agent as act', async () => {
  const d = delegator();
  const tok = await d.token(who('alice'), 'orders_api');
  const c = decodeJwt(tok);
  assert.equal(c.iss, m.issuer);
  assert.equal(c.aud, 'orders_api');
  assert.equal(c.sub, 'alice');
  assert.equal(c.tenant, TENANT);
  assert.equal(c.delegation_mode, 'on_behalf_of');
  assert.deepEqual(c.act, { sub: AGENT, client_id: CLIENT });
  assert.equal(c.trace_id, '4bf92f3577b34da6a3ce929d0e0e4736');
  assert.equal(c.session_id, 'sess-alice');
  assert.equal(c.grant_id, prov.grants.alice);
  assert.equal(c.scope, 'orders:read');
  assert.equal(await d.token(who('alice'), 'orders_api'), tok, 'cached');
  assert.equal(d.exchanges, 1);
});

test('no grant: carol gets a GrantRequiredError that says who and what to ask for', async () => {
  await assert.rejects(delegator().token(who('carol'), 'orders_api'), (e: unknown) => {
    refusal(GrantRequiredError, 'no_active_grant')(e);
    const g = e as GrantRequiredError;
    assert.equal(g.tenant, TENANT);
    assert.equal(g.subject, 'carol');
    assert.equal(g.audience, 'orders_api');
    assert.equal(g.status, 400);
    return true;
  });
  await assert.rejects(
    delegator().token(who('bob'), 'billing_api'),
    refusal(GrantRequiredError, 'grant_does_not_cover_audience_or_mode'),
  );
});

test('scopes only narrow', async () => {
  const d = delegator();
  // The audience defines orders:write, but alice's grant does not hold it.
  await assert.rejects(
    d.token(who('alice'), 'orders_api', { scopes: ['orders:write'] }),
    refusal(GrantRequiredError, 'scope_not_allowed'),
  );
  // Without a scope parameter: envelope ∩ grant ∩ audience.
  const all = decodeJwt(await d.token(who('alice'), 'orders_api', { scopes: [] }));
  assert.equal(all.scope, 'orders:read');
  // The user's own token did not grant orders:read: nothing is left.
  await assert.rejects(
    d.token(who('alice', ['balance:read']), 'orders_api', { scopes: [] }),
    refusal(GrantRequiredError, 'no_effective_scope'),
  );
});

test('revoked grant: no new tokens, and introspection says inactive at once', async () => {
  const d = delegator();
  const tok = await d.token(who('dave'), 'orders_api');
  const introspect = async () => {
    const res = await fetch(`${m.issuer}/oauth2/introspect`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${btoa(`${CLIENT}-orders-api:${encodeURIComponent(prov.ordersSecret)}`)}`,
      },
      body: new URLSearchParams({ token: tok }).toString(),
    });
    return ((await res.json()) as { active: boolean }).active;
  };
  assert.equal(await introspect(), true);
  await m.admin('POST', `/grants/${prov.grants.dave}/revoke`, { reason: 'test: access withdrawn' });
  assert.equal(await introspect(), false);
  d.forget(who('dave'), 'orders_api');
  await assert.rejects(d.token(who('dave'), 'orders_api'), refusal(GrantRequiredError, 'no_active_grant'));
});

test('replay: the same envelope is refused the second time for the same audience', async () => {
  let envelope: string | undefined;
  const replaying: EnvelopeSigner = {
    ...signer,
    sign: async (input) => {
      envelope ??= await signer.sign(input);
      return envelope;
    },
  };
  const d = delegator({ signer: replaying });
  await d.token(who('alice'), 'orders_api');
  d.forget(who('alice'), 'orders_api');
  await assert.rejects(d.token(who('alice'), 'orders_api'), refusal(ClientError, 'envelope_replayed'));
  // One envelope may be exchanged for several audiences.
  await d.token(who('alice'), 'billing_api');
});

test('every kind of refusal is mapped from its reason', async () => {
  await assert.rejects(
    delegator({ clientAuth: { method: 'client_secret_basic', clientSecret: 'wrong' } }).token(
      who('alice'),
      'orders_api',
    ),
    refusal(ClientError, 'client_authentication_failed'),
  );
  await assert.rejects(delegator().token(who('alice'), 'nope_api'), refusal(ClientError, 'unknown_audience'));
  const stranger = await generateEnvelopeKey();
  const wrongKey = createSigner({ key: stranger.privateJwk, clientId: CLIENT, issuer: m.issuer });
  await assert.rejects(
    delegator({ signer: wrongKey }).token(who('alice'), 'orders_api'),
    refusal(ClientError, 'envelope_unknown_kid'),
  );
  await assert.rejects(
    delegator().token(
      { ...who('alice'), actor: { type: 'user', sub: 'alice', tenant: 'globex' } },
      'orders_api',
    ),
    refusal(ClientError, 'tenant_not_allowed'),
  );
  await assert.rejects(
    delegator({ allowed: ['billing_api'] }).token(who('alice'), 'orders_api'),
    refusal(ClientError, 'audience_not_in_envelope'),
  );
  // Nothing listening: unavailable, retry later.
  const port = await freePort();
  await assert.rejects(
    delegator({ tokenEndpoint: `http://127.0.0.1:${port}/oauth2/token` }).token(who('alice'), 'orders_api'),
    (e: unknown) => e instanceof UnavailableError && e.code === 'network_error' && e.kind === 'unavailable',
  );
  // Every reason seen in this file is one the server documents.
  const documented = new Set(
    (
      JSON.parse(readFileSync(join(repoRoot, 'testdata', 'reasons.json'), 'utf8')) as {
        reasons: { reason: string }[];
      }
    ).reasons.map((r) => r.reason),
  );
  for (const r of seenReasons) assert.ok(documented.has(r), r);
});

test('Mandate (the Go verifier) accepts envelopes signed with every allowed algorithm', async () => {
  const algs: EnvelopeAlgorithm[] = ['ES256', 'ES384', 'EdDSA', 'PS256', 'RS256'];
  const pairs = await Promise.all(algs.map((alg) => generateEnvelopeKey({ alg })));
  const client = 'ts-mcp-algs';
  const p = await provision(m, {
    clientId: client,
    jwks: { keys: pairs.flatMap((k) => k.publicJwks.keys as JWK[]) },
    users: { alice: ['orders_api'] },
  });
  for (const [i, pair] of pairs.entries()) {
    const s = createSigner({ key: pair.privateJwk, clientId: client, issuer: m.issuer });
    const d = new Delegator({
      issuer: m.issuer,
      clientId: client,
      clientAuth: { method: 'client_secret_basic', clientSecret: p.mcpSecret },
      signer: s,
      audiences: { orders_api: { baseUrls: ['http://127.0.0.1:1/'], scopes: ['orders:read'] } },
    });
    const tok = await d.token(
      { ...who('alice'), agent: { ...who('alice').agent, client_id: client } },
      'orders_api',
    );
    assert.equal(decodeJwt(tok).sub, 'alice', algs[i]);
  }
});

test('client_secret_post and private_key_jwt against Mandate', async () => {
  const post = await provision(m, {
    clientId: 'ts-mcp-post',
    jwks: keys.publicJwks,
    authMethod: 'client_secret_post',
    users: { alice: ['orders_api'] },
  });
  const sPost = createSigner({ key: keys.privateJwk, clientId: 'ts-mcp-post', issuer: m.issuer });
  const d1 = new Delegator({
    issuer: m.issuer,
    clientId: 'ts-mcp-post',
    clientAuth: { method: 'client_secret_post', clientSecret: post.mcpSecret },
    signer: sPost,
    audiences: { orders_api: { baseUrls: ['http://127.0.0.1:1/'] } },
  });
  assert.equal(decodeJwt(await d1.token(who('alice'), 'orders_api')).sub, 'alice');

  const auth = await generateEnvelopeKey({ kid: 'client-auth-1' });
  await provision(m, {
    clientId: 'ts-mcp-pkjwt',
    jwks: { keys: [...(keys.publicJwks.keys as JWK[]), ...(auth.publicJwks.keys as JWK[])] },
    authMethod: 'private_key_jwt',
    users: { alice: ['orders_api'] },
  });
  const d2 = new Delegator({
    issuer: m.issuer,
    clientId: 'ts-mcp-pkjwt',
    clientAuth: { method: 'private_key_jwt', key: auth.privateJwk },
    signer: createSigner({ key: keys.privateJwk, clientId: 'ts-mcp-pkjwt', issuer: m.issuer }),
    audiences: { orders_api: { baseUrls: ['http://127.0.0.1:1/'] } },
  });
  assert.equal(decodeJwt(await d2.token(who('alice'), 'orders_api')).sub, 'alice');
});

test('a token for one audience is refused by another', async () => {
  const billingToken = await delegator().token(who('alice'), 'billing_api');
  const orders = createVerifier({ issuer: m.issuer, audience: 'orders_api' });
  await assert.rejects(
    orders.verify(billingToken),
    (e: unknown) =>
      e instanceof VerificationError && e.code === 'invalid_token' && /another audience/.test(e.description),
  );
});

async function serve(handler: Parameters<typeof createServer>[1]): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

test('end to end: delegator.fetch to a downstream API on the verifier; revocation seen online', async () => {
  const probe = decodeJwt(await delegator().token(who('alice'), 'orders_api'));
  assert.equal(probe.actor_type, 'user', 'Mandate says the actor is a user (SPEC §5)');
  const orders = createVerifier({
    issuer: m.issuer,
    audience: 'orders_api',
    introspection: { clientId: `${CLIENT}-orders-api`, clientSecret: prov.ordersSecret },
  });
  const seen: unknown[] = [];
  const guard = protect(orders, { scopes: ['orders:read'], online: true });
  const api = await serve((req, res) =>
    guard(req, res, () => {
      const p = principalOf(req);
      seen.push({ p, traceparent: req.headers.traceparent });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ user: p?.user, agent: p?.agent }));
    }),
  );
  try {
    const extra = await provision(m, {
      clientId: 'ts-mcp-e2e',
      jwks: keys.publicJwks,
      users: { erin: ['orders_api'] },
    });
    const d = new Delegator({
      issuer: m.issuer,
      clientId: 'ts-mcp-e2e',
      clientAuth: { method: 'client_secret_basic', clientSecret: extra.mcpSecret },
      signer: createSigner({ key: keys.privateJwk, clientId: 'ts-mcp-e2e', issuer: m.issuer }),
      audiences: { orders_api: { baseUrls: [`${api.url}/orders`], scopes: ['orders:read'] } },
    });
    const erin = { ...who('erin'), agent: { ...who('erin').agent, client_id: 'ts-mcp-e2e' } };
    const res = await d.fetch(erin, 'orders_api', `${api.url}/orders/E-1`);
    assert.deepEqual(await res.json(), { user: 'erin', agent: { sub: AGENT, clientId: 'ts-mcp-e2e' } });
    const first = seen[0] as { p: { actorType: string; traceId: string }; traceparent: string };
    assert.equal(first.p.actorType, 'user');
    assert.equal(first.p.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
    assert.match(first.traceparent, /^00-4bf92f3577b34da6a3ce929d0e0e4736-/);
    await m.admin('POST', `/grants/${extra.grants.erin}/revoke`, { reason: 'test' });
    // The cached token is refused online; the delegator retries once, and Mandate says why.
    await assert.rejects(
      d.fetch(erin, 'orders_api', `${api.url}/orders/E-1`),
      refusal(GrantRequiredError, 'no_active_grant'),
    );
  } finally {
    api.server.close();
  }
});

test('a service actor: exchanged without a grant, never presented as a user downstream', async () => {
  const client = 'ts-mcp-service';
  const created = await m.admin<{ client_secret: string }>('POST', '/clients', {
    client_id: client,
    name: 'TypeScript nightly sync',
    jwks: keys.publicJwks,
    grant_types: ['urn:ietf:params:oauth:grant-type:token-exchange'],
    allowed_tenants: [TENANT],
    allowed_audiences: ['billing_api'],
    allowed_scopes: ['balance:read'],
    service_actors: ['nightly-sync'],
  });
  await m.admin('PATCH', '/audiences/billing_api', { allowed_modes: ['on_behalf_of', 'service_identity'] });
  const d = new Delegator({
    issuer: m.issuer,
    clientId: client,
    clientAuth: { method: 'client_secret_basic', clientSecret: created.client_secret },
    signer: createSigner({ key: keys.privateJwk, clientId: client, issuer: m.issuer }),
    audiences: { billing_api: { baseUrls: ['http://127.0.0.1:1/'], scopes: ['balance:read'] } },
  });
  const service: Identity = {
    actor: { type: 'service', sub: 'nightly-sync', tenant: TENANT },
    agent: { type: 'mcp_agent', id: 'sync-agent', client_id: client },
    session: { id: 'batch-1' },
    scopes: ['balance:read'],
    mode: 'service_identity',
  };
  const tok = await d.token(service, 'billing_api');
  const p = await createVerifier({ issuer: m.issuer, audience: 'billing_api' }).verify(tok, {
    scopes: ['balance:read'],
  });
  assert.equal(p.actorType, 'service');
  assert.equal(p.service, 'nightly-sync');
  assert.equal(p.user, undefined);
  assert.equal(p.mode, 'service_identity');
  assert.equal(p.tenant, TENANT);
  // A service the client may not present is refused by Mandate, and mapped.
  await assert.rejects(
    d.token({ ...service, actor: { ...service.actor, sub: 'other-service' } }, 'billing_api'),
    refusal(ClientError, 'service_actor_not_allowed'),
  );
});
