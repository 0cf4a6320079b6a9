import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Delegator, type DelegatorOptions, type Identity, RefusedURLError } from '../src/delegator/index.js';
import { createSigner, generateEnvelopeKey } from '../src/envelope/index.js';
import { ClientError, GrantRequiredError, UnavailableError } from '../src/errors/index.js';

const ISSUER = 'https://mandate.test';
const keys = await generateEnvelopeKey();
const signer = createSigner({ key: keys.privateJwk, clientId: 'mcp', issuer: ISSUER });

const alice: Identity = {
  actor: { type: 'user', sub: 'alice', tenant: 'acme' },
  agent: { type: 'mcp_agent', id: 'agent-1', client_id: 'mcp' },
  session: { id: 's1', trace_id: '4bf92f3577b34da6a3ce929d0e0e4736' },
  scopes: ['orders:read', 'balance:read'],
  mode: 'on_behalf_of',
  traceFlags: '01',
};
const bob: Identity = { ...alice, actor: { ...alice.actor, sub: 'bob' } };

interface Sent {
  url: string;
  method: string;
  headers: Headers;
  body: string;
}

/** A fake network: Mandate's token endpoint plus whatever routes a test adds. */
function fakeNet(opts: {
  token?: (form: URLSearchParams, n: number) => Response | Promise<Response>;
  routes?: Record<string, (req: Sent) => Response>;
}) {
  const sent: Sent[] = [];
  let exchanges = 0;
  const f: typeof fetch = async (input, init) => {
    const url = String(input instanceof Request ? input.url : input);
    const req: Sent = {
      url,
      method: init?.method ?? 'GET',
      headers: new Headers(init?.headers),
      body: typeof init?.body === 'string' ? init.body : '',
    };
    sent.push(req);
    if (url === `${ISSUER}/oauth2/token`) {
      exchanges++;
      const form = new URLSearchParams(req.body);
      return opts.token
        ? opts.token(form, exchanges)
        : Response.json({
            access_token: `tok-${exchanges}`,
            token_type: 'Bearer',
            expires_in: 300,
            scope: form.get('scope') ?? '',
          });
    }
    const route = opts.routes?.[url];
    if (!route) throw new TypeError(`fake network: nothing at ${url}`);
    return route(req);
  };
  return { fetch: f, sent, exchanges: () => exchanges };
}

function delegator(net: { fetch: typeof fetch }, extra: Partial<DelegatorOptions> = {}) {
  return new Delegator({
    issuer: ISSUER,
    clientId: 'mcp',
    clientAuth: { method: 'client_secret_basic', clientSecret: 's3cret with space' },
    signer,
    audiences: {
      orders_api: { baseUrls: ['https://orders.test/api/'], scopes: ['orders:read'] },
      billing_api: { baseUrls: ['https://billing.test'] },
    },
    fetch: net.fetch,
    ...extra,
  });
}

test('one exchange per key under concurrency, and the request is a well-formed token exchange', async () => {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const net = fakeNet({
    token: async (form, n) => {
      await gate;
      return Response.json({
        access_token: `tok-${n}`,
        token_type: 'Bearer',
        expires_in: 300,
        scope: form.get('scope'),
      });
    },
  });
  const d = delegator(net);
  const all = Promise.all(Array.from({ length: 20 }, () => d.token(alice, 'orders_api')));
  await new Promise((r) => setTimeout(r, 10));
  release();
  const tokens = await all;
  assert.deepEqual(new Set(tokens), new Set(['tok-1']));
  assert.equal(net.exchanges(), 1);
  assert.equal(d.exchanges, 1);
  const req = net.sent[0] as Sent;
  const form = new URLSearchParams(req.body);
  assert.equal(form.get('grant_type'), 'urn:ietf:params:oauth:grant-type:token-exchange');
  assert.equal(form.get('subject_token_type'), 'urn:mandate:params:oauth:token-type:eie');
  assert.equal(form.get('audience'), 'orders_api');
  assert.equal(form.get('scope'), 'orders:read');
  // RFC 6749 §2.3.1: form-encode, then base64.
  assert.equal(req.headers.get('authorization'), `Basic ${btoa('mcp:s3cret+with+space')}`);
  assert.equal(form.get('client_secret'), null);
});

test('users, audiences and scopes are cached apart', async () => {
  const net = fakeNet({});
  const d = delegator(net);
  const a1 = await d.token(alice, 'orders_api');
  const b1 = await d.token(bob, 'orders_api');
  const a2 = await d.token(alice, 'billing_api');
  const a3 = await d.token(alice, 'orders_api', { scopes: ['orders:write'] });
  const narrower = await d.token({ ...alice, scopes: ['orders:read'] }, 'orders_api');
  const otherTenant = await d.token({ ...alice, actor: { ...alice.actor, tenant: 'globex' } }, 'orders_api');
  assert.equal(new Set([a1, b1, a2, a3, narrower, otherTenant]).size, 6);
  assert.equal(await d.token(alice, 'orders_api'), a1);
  // A different session or trace of the same user shares the token.
  assert.equal(await d.token({ ...alice, session: { id: 's2' } }, 'orders_api'), a1);
  assert.equal(net.exchanges(), 6);
});

test('a cached token is refreshed before it expires (fake clock)', async () => {
  let now = 1_000_000_000_000;
  const net = fakeNet({});
  const clocked = createSigner({ key: keys.privateJwk, clientId: 'mcp', issuer: ISSUER, now: () => now });
  const d = delegator(net, { now: () => now, signer: clocked });
  assert.equal(await d.token(alice, 'orders_api'), 'tok-1');
  now += 269_000; // 300 s token, refreshed 30 s before expiry
  assert.equal(await d.token(alice, 'orders_api'), 'tok-1');
  now += 1_000;
  assert.equal(await d.token(alice, 'orders_api'), 'tok-2');
  // A short-lived token is refreshed a fifth of its life before expiry.
  const shortNet = fakeNet({
    token: (_f, n) => Response.json({ access_token: `s-${n}`, token_type: 'bearer', expires_in: 60 }),
  });
  const s = delegator(shortNet, { now: () => now, signer: clocked });
  assert.equal(await s.token(alice, 'orders_api'), 's-1');
  now += 47_000;
  assert.equal(await s.token(alice, 'orders_api'), 's-1');
  now += 1_000;
  assert.equal(await s.token(alice, 'orders_api'), 's-2');
});

test('errors are typed and never cached', async () => {
  const answers: Response[] = [
    Response.json(
      { error: 'invalid_request', error_description: 'no grant', reason: 'no_active_grant' },
      { status: 400 },
    ),
    Response.json(
      { error: 'temporarily_unavailable', reason: 'storage_unavailable' },
      { status: 503, headers: { 'retry-after': '3' } },
    ),
    Response.json({ error: 'invalid_client', reason: 'client_authentication_failed' }, { status: 401 }),
    new Response('<html>bad gateway</html>', { status: 502 }),
    Response.json({ access_token: 'ok', token_type: 'Bearer', expires_in: 300 }),
  ];
  const net = fakeNet({ token: () => answers.shift() as Response });
  const d = delegator(net);
  await assert.rejects(d.token(alice, 'orders_api'), (e: unknown) => {
    assert.ok(e instanceof GrantRequiredError);
    assert.equal(e.reason, 'no_active_grant');
    assert.equal(e.tenant, 'acme');
    assert.equal(e.subject, 'alice');
    assert.equal(e.audience, 'orders_api');
    assert.deepEqual(e.scopes, ['orders:read']);
    return true;
  });
  await assert.rejects(
    d.token(alice, 'orders_api'),
    (e: unknown) => e instanceof UnavailableError && e.retryAfter === 3,
  );
  await assert.rejects(
    d.token(alice, 'orders_api'),
    (e: unknown) => e instanceof ClientError && e.code === 'invalid_client',
  );
  await assert.rejects(
    d.token(alice, 'orders_api'),
    (e: unknown) => e instanceof UnavailableError && e.status === 502,
  );
  assert.equal(await d.token(alice, 'orders_api'), 'ok');
  assert.equal(net.exchanges(), 5);
  // A network failure is "unavailable".
  const down = delegator({
    fetch: async () => {
      throw new TypeError('fetch failed');
    },
  });
  await assert.rejects(
    down.token(alice, 'orders_api'),
    (e: unknown) => e instanceof UnavailableError && e.code === 'network_error',
  );
});

test('the cache is bounded', async () => {
  const net = fakeNet({});
  const d = delegator(net, { maxCacheEntries: 3 });
  for (const u of ['u1', 'u2', 'u3', 'u4', 'u5'])
    await d.token({ ...alice, actor: { ...alice.actor, sub: u } }, 'orders_api');
  assert.equal(d.cacheSize, 3);
  // The oldest went first: u5 is cached, u1 is exchanged again.
  await d.token({ ...alice, actor: { ...alice.actor, sub: 'u5' } }, 'orders_api');
  assert.equal(net.exchanges(), 5);
  await d.token({ ...alice, actor: { ...alice.actor, sub: 'u1' } }, 'orders_api');
  assert.equal(net.exchanges(), 6);
});

test('an expired identity is refused without an exchange; an envelope never outlives it', async () => {
  let now = 2_000_000_000_000;
  const net = fakeNet({});
  const clocked = createSigner({ key: keys.privateJwk, clientId: 'mcp', issuer: ISSUER, now: () => now });
  const d = delegator(net, { now: () => now, signer: clocked });
  await assert.rejects(d.token({ ...alice, expiresAt: now / 1000 - 1 }, 'orders_api'), ClientError);
  assert.equal(net.exchanges(), 0);
  await d.token({ ...alice, expiresAt: now / 1000 + 10 }, 'orders_api');
  const env = new URLSearchParams((net.sent[0] as Sent).body).get('subject_token') ?? '';
  const claims = JSON.parse(Buffer.from(env.split('.')[1] ?? '', 'base64url').toString());
  assert.equal(claims.exp - claims.iat, 10);
  now += 1;
});

test('fetch adds the token and traceparent only under the audience base URLs', async () => {
  const net = fakeNet({
    routes: {
      'https://orders.test/api/orders/1': () => Response.json({ ok: true }),
      'https://orders.test/api': () => Response.json({ ok: true }),
    },
  });
  const d = delegator(net);
  const res = await d.fetch(alice, 'orders_api', 'https://orders.test/api/orders/1');
  assert.equal(res.status, 200);
  const call = net.sent.at(-1) as Sent;
  assert.equal(call.headers.get('authorization'), 'Bearer tok-1');
  assert.match(
    call.headers.get('traceparent') ?? '',
    /^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$/,
  );
  await d.fetch(alice, 'orders_api', 'https://orders.test/api');
  const before = net.sent.length;
  for (const url of [
    'https://evil.test/api/orders/1',
    'http://orders.test/api/orders/1',
    'https://orders.test:8443/api/orders/1',
    'https://orders.test/apix/orders',
    'https://orders.test/other',
    'https://orders.test/api/../admin',
    'https://orders.test/api/%2e%2e/admin',
    'https://user:pw@orders.test/api/orders/1',
  ]) {
    await assert.rejects(d.fetch(alice, 'orders_api', url), RefusedURLError, url);
  }
  assert.equal(net.sent.length, before, 'nothing was sent anywhere');
  await assert.rejects(d.fetch(alice, 'nope', 'https://orders.test/api/x'), TypeError);
});

test('redirects: followed under the base URLs, returned unfollowed elsewhere; the token never leaves', async () => {
  const net = fakeNet({
    routes: {
      'https://orders.test/api/a': () => new Response(null, { status: 302, headers: { location: '/api/b' } }),
      'https://orders.test/api/b': (r) => Response.json({ auth: r.headers.has('authorization') }),
      'https://orders.test/api/out': () =>
        new Response(null, { status: 307, headers: { location: 'https://attacker.test/steal' } }),
      'https://orders.test/api/side': () =>
        new Response(null, { status: 301, headers: { location: '/not-api' } }),
      'https://orders.test/api/loop': () =>
        new Response(null, { status: 302, headers: { location: '/api/loop' } }),
      'https://orders.test/api/post': () =>
        new Response(null, { status: 303, headers: { location: '/api/b' } }),
      'https://attacker.test/steal': () => Response.json({ stolen: true }),
    },
  });
  const d = delegator(net);
  const ok = await d.fetch(alice, 'orders_api', 'https://orders.test/api/a');
  assert.deepEqual(await ok.json(), { auth: true });
  const out = await d.fetch(alice, 'orders_api', 'https://orders.test/api/out', {
    method: 'POST',
    body: 'x',
  });
  assert.equal(out.status, 307);
  assert.equal(out.headers.get('location'), 'https://attacker.test/steal');
  const side = await d.fetch(alice, 'orders_api', 'https://orders.test/api/side');
  assert.equal(side.status, 301);
  assert.ok(!net.sent.some((s) => s.url.startsWith('https://attacker.test') || s.url.endsWith('/not-api')));
  await assert.rejects(d.fetch(alice, 'orders_api', 'https://orders.test/api/loop'), /redirects/);
  const manual = await d.fetch(alice, 'orders_api', 'https://orders.test/api/a', { redirect: 'manual' });
  assert.equal(manual.status, 302);
  const post = await d.fetch(alice, 'orders_api', 'https://orders.test/api/post', {
    method: 'POST',
    body: '{}',
    headers: { 'content-type': 'application/json' },
  });
  assert.equal(post.status, 200);
  const last = net.sent.at(-1) as Sent;
  assert.equal(last.method, 'GET');
  assert.equal(last.headers.get('content-type'), null);
});

test('a 401 invalid_token from the API drops the token and retries once', async () => {
  let calls = 0;
  const net = fakeNet({
    routes: {
      'https://billing.test/balance': (r) => {
        calls++;
        if (r.headers.get('authorization') === 'Bearer tok-1') {
          return new Response(null, {
            status: 401,
            headers: { 'www-authenticate': 'Bearer error="invalid_token"' },
          });
        }
        return Response.json({ ok: true });
      },
    },
  });
  const d = delegator(net);
  const res = await d.fetch(alice, 'billing_api', 'https://billing.test/balance');
  assert.equal(res.status, 200);
  assert.equal(calls, 2);
  assert.equal(net.exchanges(), 2);
});

test('client_secret_post and private_key_jwt', async () => {
  const post = fakeNet({});
  await delegator(post, { clientAuth: { method: 'client_secret_post', clientSecret: 'pw' } }).token(
    alice,
    'orders_api',
  );
  const form = new URLSearchParams((post.sent[0] as Sent).body);
  assert.equal(form.get('client_id'), 'mcp');
  assert.equal(form.get('client_secret'), 'pw');
  assert.equal((post.sent[0] as Sent).headers.get('authorization'), null);

  const jwt = fakeNet({});
  const authKey = await generateEnvelopeKey({ kid: 'auth-1' });
  await delegator(jwt, { clientAuth: { method: 'private_key_jwt', key: authKey.privateJwk } }).token(
    alice,
    'orders_api',
  );
  const f2 = new URLSearchParams((jwt.sent[0] as Sent).body);
  assert.equal(f2.get('client_assertion_type'), 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
  const [h, p] = (f2.get('client_assertion') ?? '')
    .split('.')
    .slice(0, 2)
    .map((s) => JSON.parse(Buffer.from(s, 'base64url').toString()));
  assert.deepEqual([h.alg, h.typ, h.kid], ['ES256', 'JWT', 'auth-1']);
  assert.deepEqual([p.iss, p.sub, p.aud], ['mcp', 'mcp', `${ISSUER}/oauth2/token`]);
  assert.ok(p.jti && p.exp > p.iat);
});

test('configuration mistakes fail at construction', () => {
  const net = fakeNet({});
  assert.throws(() => delegator(net, { issuer: `${ISSUER}/` }), /slash/);
  assert.throws(() => delegator(net, { clientId: 'other' }), /signer/);
  assert.throws(() => delegator(net, { audiences: { x: { baseUrls: ['ftp://x.test'] } } }), /http/);
  assert.throws(
    () => delegator(net, { audiences: { x: { baseUrls: ['https://u:p@x.test'] } } }),
    /credentials/,
  );
  assert.throws(() => delegator(net, { audiences: { x: { baseUrls: [] } } }), /baseUrls/);
});

test('real sockets: a redirect to another host is not followed and that host gets nothing', async () => {
  const { createServer } = await import('node:http');
  const hits: { host: string; authorization?: string; traceparent?: string }[] = [];
  const other = createServer((req, res) => {
    hits.push({
      host: 'other',
      authorization: req.headers.authorization,
      traceparent: String(req.headers.traceparent),
    });
    res.end('stolen');
  });
  await new Promise<void>((ok) => other.listen(0, '127.0.0.1', ok));
  const otherUrl = `http://127.0.0.1:${(other.address() as { port: number }).port}`;
  const api = createServer((req, res) => {
    hits.push({ host: 'api', authorization: req.headers.authorization });
    if (req.url === '/api/away') {
      res.writeHead(302, { location: `${otherUrl}/collect` });
      res.end();
      return;
    }
    res.end('ok');
  });
  await new Promise<void>((ok) => api.listen(0, '127.0.0.1', ok));
  const apiUrl = `http://127.0.0.1:${(api.address() as { port: number }).port}`;
  try {
    const net: typeof fetch = async (input, init) =>
      String(input) === `${ISSUER}/oauth2/token`
        ? Response.json({ access_token: 'secret-token', token_type: 'Bearer', expires_in: 300 })
        : fetch(input, init);
    const d = new Delegator({
      issuer: ISSUER,
      clientId: 'mcp',
      clientAuth: { method: 'client_secret_basic', clientSecret: 'x' },
      signer,
      audiences: { orders_api: { baseUrls: [`${apiUrl}/api`] } },
      fetch: net,
    });
    const res = await d.fetch(alice, 'orders_api', `${apiUrl}/api/away`);
    assert.equal(res.status, 302);
    assert.equal(res.headers.get('location'), `${otherUrl}/collect`);
    assert.deepEqual(hits, [{ host: 'api', authorization: 'Bearer secret-token' }]);
    await assert.rejects(d.fetch(alice, 'orders_api', `${otherUrl}/collect`), RefusedURLError);
    assert.equal(hits.length, 1);
  } finally {
    api.close();
    other.close();
  }
});
