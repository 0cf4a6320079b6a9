import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import {
  IDENTITY_KEY,
  type Identity,
  identity,
  NoIdentityError,
  SessionOwners,
  stripToken,
  withIdentity,
} from '../src/mcp/index.js';

const alice: Identity = {
  actor: { type: 'user', sub: 'alice', tenant: 'acme' },
  agent: { type: 'mcp_agent', id: 'a', client_id: 'mcp' },
  session: { id: 's', trace_id: '4bf92f3577b34da6a3ce929d0e0e4736' },
  scopes: [],
  mode: 'on_behalf_of',
  issuer: 'https://idp.test',
  expiresAt: 2_000_000_000,
};
const extraFor = (id: Identity | undefined) => ({
  authInfo: { token: '', clientId: '', scopes: [], extra: { [IDENTITY_KEY]: id } },
});

test('identity(extra) and withIdentity: no identity, no call', async () => {
  assert.equal(identity(extraFor(alice)).actor.sub, 'alice');
  assert.throws(() => identity({}), NoIdentityError);
  assert.throws(() => identity(extraFor(undefined)), NoIdentityError);
  assert.throws(() => identity(extraFor(alice), () => 2_000_000_000_000), /expired/);
  let called = false;
  const tool = withIdentity((id: Identity, args: { x: number }, _extra: unknown) => {
    called = true;
    return `${id.actor.sub}:${args.x}`;
  });
  assert.equal(tool({ x: 1 }, extraFor(alice)), 'alice:1');
  called = false;
  assert.throws(() => tool({ x: 1 }, {}), NoIdentityError);
  assert.equal(called, false);
  // A zero-argument tool gets only extra.
  const noArgs = withIdentity((id: Identity, _extra: unknown) => id.actor.tenant);
  assert.equal(noArgs(extraFor(alice)), 'acme');
  // _meta's traceparent wins.
  const traced = identity({
    ...extraFor(alice),
    _meta: { traceparent: '00-11111111111111111111111111111111-2222222222222222-01' },
  });
  assert.equal(traced.session.trace_id, '11111111111111111111111111111111');
  assert.equal(
    identity({ ...extraFor(alice), _meta: { traceparent: 'garbage' } }).session.trace_id,
    alice.session.trace_id,
  );
});

test('stripToken removes every view of the Authorization header', async () => {
  const seen: Record<string, unknown> = {};
  const server = createServer((req, res) => {
    seen.before = req.headersDistinct.authorization; // Node caches this once read
    stripToken(req);
    seen.headers = req.headers.authorization;
    seen.raw = req.rawHeaders.filter((h) => /bearer/i.test(h) || /^authorization$/i.test(h));
    seen.distinct = req.headersDistinct.authorization;
    seen.other = req.headersDistinct['x-other'];
    res.end();
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  const twoTokens: Record<string, string | string[]> = {
    authorization: ['Bearer t1', 'Bearer t2'],
    'x-other': 'y',
  };
  await new Promise<void>((ok, fail) => {
    const r = request(`http://127.0.0.1:${port}/`, { headers: twoTokens }, (res) => {
      res.resume();
      res.on('end', ok);
    });
    r.on('error', fail);
    r.end();
  });
  server.close();
  assert.deepEqual(seen.before, ['Bearer t1', 'Bearer t2']);
  assert.equal(seen.headers, undefined);
  assert.deepEqual(seen.raw, []);
  assert.equal(seen.distinct, undefined);
  assert.deepEqual(seen.other, ['y']);
});

test('session owners: tenant and user together, bounded', () => {
  const s = new SessionOwners(2);
  s.bind('s1', alice);
  assert.ok(s.allows('s1', alice));
  assert.ok(!s.allows('s1', { ...alice, actor: { ...alice.actor, sub: 'bob' } }));
  assert.ok(!s.allows('s1', { ...alice, actor: { ...alice.actor, tenant: 'globex' } }));
  assert.ok(!s.allows('s1', { ...alice, issuer: 'https://other-idp.test' }));
  assert.ok(!s.allows('unknown', alice));
  s.bind('s2', alice);
  s.bind('s3', alice);
  assert.equal(s.size, 2);
  assert.ok(!s.allows('s1', alice), 'the oldest was forgotten');
  s.forget('s3');
  assert.ok(!s.allows('s3', alice));
});
