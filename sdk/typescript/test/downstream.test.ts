import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose';
import {
  bearerToken,
  createVerifier,
  type Principal,
  principalOf,
  protect,
  VerificationError,
  type VerifierOptions,
} from '../src/downstream/index.js';
import { repoRoot } from './helpers/mandate.js';

const ISSUER = 'https://mandate.test';
const NOW = 1_798_761_600;

const es = await generateKeyPair('ES256');
const ed = await generateKeyPair('EdDSA');
const rogue = await generateKeyPair('ES256');
const jwks = {
  keys: [
    { ...(await exportJWK(es.publicKey)), kid: 'k-es', alg: 'ES256', use: 'sig' },
    { ...(await exportJWK(ed.publicKey)), kid: 'k-ed', alg: 'EdDSA', use: 'sig' },
  ],
};

function jwksNet(doc: unknown = jwks) {
  let fetches = 0;
  const f: typeof fetch = async () => {
    fetches++;
    return Response.json(doc);
  };
  return { fetch: f, fetches: () => fetches };
}

const userClaims = (): JWTPayload => ({
  iss: ISSUER,
  sub: 'alice',
  aud: 'orders_api',
  iat: NOW - 10,
  exp: NOW + 290,
  jti: 'tok-1',
  client_id: 'mcp-web',
  scope: 'orders:read orders:write',
  tenant: 'acme',
  delegation_mode: 'on_behalf_of',
  actor_type: 'user',
  actor_sub: 'alice',
  agent_id: 'support-agent',
  trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
  session_id: 'sess-1',
  grant_id: 'grant-1',
  act: { sub: 'support-agent', client_id: 'mcp-web', act: { sub: 'planner', client_id: 'upstream' } },
});

async function sign(claims: JWTPayload, header: Record<string, unknown> = {}, key = es.privateKey) {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'k-es', ...header })
    .sign(key);
}

function verifier(extra: Partial<VerifierOptions> = {}, net = jwksNet()) {
  return createVerifier({
    issuer: ISSUER,
    audience: 'orders_api',
    fetch: net.fetch,
    now: () => NOW * 1000,
    ...extra,
  });
}

const refused = (code: string, status: number, match?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof VerificationError, String(e));
  assert.equal(e.code, code);
  assert.equal(e.status, status);
  if (match) assert.match(e.description, match);
  return true;
};

test('a user token on behalf of: the principal', async () => {
  const p = await verifier().verify(await sign(userClaims()), { scopes: ['orders:read'] });
  assert.deepEqual(p, {
    actorType: 'user',
    user: 'alice',
    subject: 'alice',
    tenant: 'acme',
    mode: 'on_behalf_of',
    agent: { sub: 'support-agent', clientId: 'mcp-web' },
    priorActors: [{ sub: 'planner', clientId: 'upstream' }],
    clientId: 'mcp-web',
    scopes: ['orders:read', 'orders:write'],
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    sessionId: 'sess-1',
    grantId: 'grant-1',
    audience: 'orders_api',
    jti: 'tok-1',
    issuedAt: NOW - 10,
    expiresAt: NOW + 290,
  } satisfies Principal);
});

test('service_identity for a user, and a service actor, are told apart', async () => {
  const v = verifier();
  const { act: _, ...noAct } = userClaims();
  const si = await v.verify(await sign({ ...noAct, sub: 'mcp-web', delegation_mode: 'service_identity' }));
  assert.equal(si.actorType, 'user');
  assert.equal(si.user, 'alice');
  assert.equal(si.subject, 'mcp-web');
  assert.deepEqual(si.agent, { sub: 'support-agent', clientId: 'mcp-web' });
  assert.deepEqual(si.priorActors, []);
  const svc = await v.verify(
    await sign({
      ...noAct,
      sub: 'mcp-web',
      delegation_mode: 'service_identity',
      actor_type: 'service',
      actor_sub: 'nightly-sync',
    }),
  );
  assert.equal(svc.actorType, 'service');
  assert.equal(svc.user, undefined, 'a service is never a user');
  assert.equal(svc.service, 'nightly-sync');
  // client_credentials: the client itself.
  const cc = await v.verify(
    await sign({
      iss: ISSUER,
      sub: 'batch-client',
      aud: 'orders_api',
      iat: NOW,
      exp: NOW + 60,
      client_id: 'batch-client',
      scope: 'orders:read',
    }),
  );
  assert.deepEqual([cc.actorType, cc.service, cc.user], ['service', 'batch-client', undefined]);
});

test('refusals name the failed check', async () => {
  const v = verifier();
  const c = userClaims();
  const cases: [string, Promise<string>, string, RegExp][] = [
    ['no actor_type', sign({ ...c, actor_type: undefined }), 'invalid_token', /no actor_type/],
    ['unknown actor_type', sign({ ...c, actor_type: 'robot' }), 'invalid_token', /actor_type/],
    ['wrong typ', sign(c, { typ: 'JWT' }), 'invalid_token', /typ/],
    ['an envelope', sign(c, { typ: 'eie+jwt' }), 'invalid_token', /typ/],
    ['wrong issuer', sign({ ...c, iss: 'https://evil.test' }), 'invalid_token', /issuer/],
    ['another audience', sign({ ...c, aud: 'billing_api' }), 'invalid_token', /audience/],
    ['expired', sign({ ...c, exp: NOW - 31 }), 'invalid_token', /expired/],
    ['issued in the future', sign({ ...c, iat: NOW + 31 }), 'invalid_token', /future/],
    ['not yet valid', sign({ ...c, nbf: NOW + 31 }), 'invalid_token', /not yet valid/],
    ['no exp', sign({ ...c, exp: undefined }), 'invalid_token', /exp/],
    ['unknown kid', sign(c, { kid: 'k-unknown' }), 'invalid_token', /kid/],
    ['no kid', sign(c, { kid: undefined }), 'invalid_token', /kid/],
    ['a key in the header', sign(c, { jwk: jwks.keys[0] }), 'invalid_token', /key/],
    ['a jku', sign(c, { jku: 'https://evil.test/jwks' }), 'invalid_token', /key/],
    ['bad signature', sign(c, {}, rogue.privateKey), 'invalid_token', /signature/],
    [
      'alg outside the list',
      new SignJWT(c)
        .setProtectedHeader({ alg: 'ES384', typ: 'at+jwt', kid: 'k-es' })
        .sign((await generateKeyPair('ES384')).privateKey),
      'invalid_token',
      /algorithm/,
    ],
    [
      'alg none',
      Promise.resolve(
        `${Buffer.from('{"alg":"none","typ":"at+jwt","kid":"k-es"}').toString('base64url')}.${Buffer.from(JSON.stringify(c)).toString('base64url')}.`,
      ),
      'invalid_token',
      /./,
    ],
    ['garbage', Promise.resolve('not.a.token'), 'invalid_token', /malformed/],
    ['too large', Promise.resolve('a'.repeat(9000)), 'invalid_token', /large/],
  ];
  for (const [name, tok, code, re] of cases) {
    await assert.rejects(v.verify(await tok), refused(code, 401, re), name);
  }
  await assert.rejects(v.verify(await sign(c), { scopes: ['orders:admin'] }), (e: unknown) => {
    assert.ok(e instanceof VerificationError);
    assert.equal(e.status, 403);
    assert.equal(e.code, 'insufficient_scope');
    assert.equal(e.scope, 'orders:admin');
    assert.equal(
      v.challenge(e),
      'Bearer error="insufficient_scope", error_description="the token lacks a scope this resource requires", scope="orders:admin"',
    );
    return true;
  });
  // EdDSA is on the default list.
  const edTok = await new SignJWT(c)
    .setProtectedHeader({ alg: 'EdDSA', typ: 'application/at+jwt', kid: 'k-ed' })
    .sign(ed.privateKey);
  assert.equal((await v.verify(edTok)).user, 'alice');
});

test('JWKS: fetched once, refetched for an unknown kid at most once per cooldown; unreachable is 503', async () => {
  const net = jwksNet();
  const v = verifier({}, net);
  const tok = await sign(userClaims());
  await v.verify(tok);
  await v.verify(tok);
  assert.equal(net.fetches(), 1);
  const unknown = await sign(userClaims(), { kid: 'k-new' });
  await assert.rejects(v.verify(unknown), refused('invalid_token', 401));
  await assert.rejects(v.verify(unknown), refused('invalid_token', 401));
  assert.ok(net.fetches() <= 2, `fetches: ${net.fetches()}`);
  const down = verifier(
    {},
    {
      fetch: async () => {
        throw new TypeError('connect ECONNREFUSED');
      },
      fetches: () => 0,
    },
  );
  await assert.rejects(down.verify(tok), refused('temporarily_unavailable', 503));
  const broken = verifier({}, { fetch: async () => new Response('oops', { status: 500 }), fetches: () => 0 });
  await assert.rejects(broken.verify(tok), refused('temporarily_unavailable', 503));
});

test('JWKS rotation: a new kid is picked up once the cooldown allows a refetch', async () => {
  const next = await generateKeyPair('ES256');
  const doc = { keys: [...jwks.keys] };
  const net = jwksNet(doc);
  const v = verifier({ jwksCooldown: 0 }, net);
  await v.verify(await sign(userClaims()));
  doc.keys.push({ ...(await exportJWK(next.publicKey)), kid: 'k-next', alg: 'ES256', use: 'sig' });
  const p = await v.verify(await sign(userClaims(), { kid: 'k-next' }, next.privateKey));
  assert.equal(p.user, 'alice');
  assert.equal(net.fetches(), 2);
});

test('introspection: inactive tokens are refused, and its failures are 503', async () => {
  let active = true;
  let auth = '';
  const net: typeof fetch = async (input, init) => {
    if (String(input).endsWith('/jwks.json')) return Response.json(jwks);
    auth = new Headers(init?.headers).get('authorization') ?? '';
    return Response.json({ active });
  };
  const v = verifier({ fetch: net, introspection: { clientId: 'orders-api', clientSecret: 'pw' } });
  const tok = await sign(userClaims());
  assert.equal((await v.verify(tok, { online: true })).user, 'alice');
  assert.equal(auth, `Basic ${btoa('orders-api:pw')}`);
  active = false;
  await assert.rejects(v.verify(tok, { online: true }), refused('invalid_token', 401, /not active/));
  assert.equal((await v.verify(tok)).user, 'alice', 'offline verification does not ask');
  const bad = verifier({
    fetch: async (input) =>
      String(input).endsWith('/jwks.json') ? Response.json(jwks) : new Response('no', { status: 401 }),
    introspection: { clientId: 'orders-api', clientSecret: 'wrong' },
  });
  await assert.rejects(bad.verify(tok, { online: true }), refused('temporarily_unavailable', 503));
});

test('bearerToken reads one Authorization header', () => {
  assert.equal(bearerToken('Bearer abc'), 'abc');
  assert.equal(bearerToken('bearer   abc'), 'abc');
  assert.throws(() => bearerToken(undefined), refused('', 401));
  assert.throws(() => bearerToken('Basic abc'), refused('', 401));
  assert.throws(() => bearerToken('Bearer '), refused('invalid_request', 400));
  assert.throws(() => bearerToken('Bearer a b'), refused('invalid_request', 400));
  assert.throws(() => bearerToken(['Bearer a', 'Bearer b']), refused('invalid_request', 400));
});

test('express/node middleware answers RFC 6750', async () => {
  const v = verifier({ realm: 'orders' });
  const guard = protect(v, { scopes: ['orders:read'] });
  const server = createServer((req, res) => {
    guard(req, res, (err) => {
      if (err) {
        res.statusCode = 500;
        res.end();
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ user: principalOf(req)?.user }));
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/orders/1`;
  try {
    const good = await fetch(url, { headers: { authorization: `Bearer ${await sign(userClaims())}` } });
    assert.deepEqual(await good.json(), { user: 'alice' });
    const none = await fetch(url);
    assert.equal(none.status, 401);
    assert.equal(none.headers.get('www-authenticate'), 'Bearer realm="orders"');
    const bad = await fetch(url, {
      headers: { authorization: `Bearer ${await sign({ ...userClaims(), aud: 'billing_api' })}` },
    });
    assert.equal(bad.status, 401);
    assert.equal(
      bad.headers.get('www-authenticate'),
      'Bearer realm="orders", error="invalid_token", error_description="token is for another audience"',
    );
    assert.equal(bad.headers.get('cache-control'), 'no-store');
    assert.deepEqual(await bad.json(), {
      error: 'invalid_token',
      error_description: 'token is for another audience',
    });
    const scope = await fetch(url, {
      headers: { authorization: `Bearer ${await sign({ ...userClaims(), scope: 'orders:write' })}` },
    });
    assert.equal(scope.status, 403);
    assert.match(
      scope.headers.get('www-authenticate') ?? '',
      /error="insufficient_scope".*scope="orders:read"/,
    );
    const inUrl = await fetch(`${url}?access_token=abc`);
    assert.equal(inUrl.status, 400);
  } finally {
    server.close();
  }
});

interface TokenVector {
  name: string;
  token: string;
  required_scopes?: string[];
  valid: boolean;
  error?: string;
  principal?: Record<string, unknown>;
}
const tokenVectors = join(repoRoot, 'testdata', 'vectors', 'access_tokens.json');

test(
  'vectors: access tokens as Mandate issues them',
  {
    skip: existsSync(tokenVectors) ? false : 'testdata/vectors/access_tokens.json is not on this branch yet',
  },
  async () => {
    const file = JSON.parse(readFileSync(tokenVectors, 'utf8')) as {
      issuer: string;
      audience: string;
      now: number;
      jwks: { keys: JWK[] };
      vectors: TokenVector[];
    };
    const v = createVerifier({
      issuer: file.issuer,
      audience: file.audience,
      now: () => file.now * 1000,
      fetch: async () => Response.json(file.jwks),
    });
    const opt = (s: unknown) => (s === '' || s === undefined || s === null ? undefined : s);
    const actor = (a: Record<string, unknown> | undefined) =>
      a && opt(a.sub) ? { sub: a.sub, ...(opt(a.client_id) ? { clientId: a.client_id } : {}) } : undefined;
    for (const vec of file.vectors) {
      const run = v.verify(vec.token, { scopes: vec.required_scopes ?? [] });
      if (!vec.valid) {
        await assert.rejects(
          run,
          (e: unknown) => e instanceof VerificationError && e.code === vec.error,
          vec.name,
        );
        continue;
      }
      const p = await run;
      const w = vec.principal ?? {};
      const want: Record<string, unknown> = {
        actorType: w.actor_type,
        user: opt(w.user),
        service: opt(w.service),
        tenant: opt(w.tenant),
        subject: w.subject,
        mode: opt(w.mode),
        agent: actor(w.agent as Record<string, unknown>),
        priorActors: ((w.prior_actors as Record<string, unknown>[]) ?? []).map(actor),
        clientId: opt(w.client_id),
        scopes: w.scopes,
        traceId: opt(w.trace_id),
        sessionId: opt(w.session_id),
        grantId: opt(w.grant_id),
        jti: opt(w.jti),
        issuedAt: w.iat,
        expiresAt: w.exp,
      };
      for (const [k, val] of Object.entries(want)) {
        assert.deepEqual((p as unknown as Record<string, unknown>)[k], val, `${vec.name}: ${k}`);
      }
    }
  },
);
