// The MCP boundary with the official SDK (streamable HTTP, stateful and stateless), a test IdP, a
// real Mandate and a downstream API: the identity tools see, the token they must never see, and
// sessions bound to their users.
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import express from 'express';
import { decodeJwt } from 'jose';
import { z } from 'zod';
import { Delegator } from '../../src/delegator/index.js';
import { createSigner, generateEnvelopeKey } from '../../src/envelope/index.js';
import { type Boundary, createBoundary, type Identity, identity, withIdentity } from '../../src/mcp/index.js';
import { startIdP, type TestIdP } from '../helpers/idp.js';
import { type RunningMandate, startMandate } from '../helpers/mandate.js';
import { AGENT, provision, TENANT } from '../helpers/provision.js';

const CLIENT = 'ts-mcp-boundary';
let m: RunningMandate;
let idp: TestIdP;
let orders: { url: string; server: Server; calls: { authorization: string; traceparent: string }[] };
let delegator: Delegator;
const servers: Server[] = [];

/** Everything reachable from a value, as strings: own properties, Headers, URLs, Maps, arrays. */
function reachableStrings(root: unknown): string[] {
  const out: string[] = [];
  const seen = new Set<unknown>();
  const walk = (v: unknown, depth: number) => {
    if (depth > 12 || v === null || v === undefined) return;
    if (typeof v === 'string') {
      out.push(v);
      return;
    }
    if (typeof v !== 'object' && typeof v !== 'function') {
      out.push(String(v));
      return;
    }
    if (seen.has(v)) return;
    seen.add(v);
    if (v instanceof URL) out.push(v.href);
    if (v instanceof Headers || v instanceof Map) {
      for (const [k, x] of (v as Map<unknown, unknown>).entries()) {
        walk(k, depth + 1);
        walk(x, depth + 1);
      }
    }
    if (typeof v === 'function') return;
    for (const k of Reflect.ownKeys(v)) {
      if (typeof k === 'string') out.push(k);
      let x: unknown;
      try {
        x = (v as Record<PropertyKey, unknown>)[k];
      } catch {
        continue;
      }
      walk(x, depth + 1);
    }
  };
  walk(root, 0);
  return out;
}

interface Probe {
  identity: Identity;
  sessionId: string | undefined;
  leaks: string[];
  headerNames: string[];
}

/** What tools saw, by call, for the test to inspect (the tool returns a summary, the test holds the raw extra). */
const extras: unknown[] = [];

function buildServer(): McpServer {
  const server = new McpServer({ name: 'ts-boundary-test', version: '1.0.0' });
  server.registerTool('probe', { description: 'returns what the tool can see' }, (extra) => {
    extras.push(extra);
    const id = identity(extra);
    const probe: Probe = {
      identity: id,
      sessionId: extra.sessionId,
      leaks: [],
      headerNames: Object.keys(extra.requestInfo?.headers ?? {}),
    };
    return { content: [{ type: 'text', text: JSON.stringify(probe) }] };
  });
  server.registerTool(
    'get_order_status',
    { description: "Status of one of the current user's orders.", inputSchema: { order_id: z.string() } },
    withIdentity(async (id, { order_id }, _extra) => {
      const res = await delegator.fetch(
        id,
        'orders_api',
        `${orders.url}/orders/${encodeURIComponent(order_id)}`,
      );
      return { content: [{ type: 'text', text: await res.text() }] };
    }),
  );
  return server;
}

async function listen(app: express.Express): Promise<string> {
  const server = createServer(app);
  servers.push(server);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;
}

/** A stateful MCP endpoint: one transport per session, each session bound to its user. */
async function statefulApp(audience: (url: string) => string): Promise<{ url: string; boundary: Boundary }> {
  const app = express();
  app.use(express.json());
  const transports = new Map<string, StreamableHTTPServerTransport>();
  let boundary: Boundary | undefined;
  app.post('/mcp', (req, res, next) => (boundary as Boundary).middleware[0]?.(req, res, next));
  app.post('/mcp', (req, res, next) => (boundary as Boundary).middleware[1]?.(req, res, next));
  app.post('/mcp', (req, res, next) => (boundary as Boundary).middleware[2]?.(req, res, next));
  app.post('/mcp', async (req, res) => {
    const sid = req.headers['mcp-session-id'];
    let transport = typeof sid === 'string' ? transports.get(sid) : undefined;
    if (!transport) {
      if (sid !== undefined || !isInitializeRequest(req.body)) {
        res
          .status(404)
          .json({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null });
        return;
      }
      const t: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: (boundary as Boundary).sessionIdGenerator(req),
        onsessioninitialized: (id) => {
          transports.set(id, t);
        },
      });
      t.onclose = () => {
        if (t.sessionId) transports.delete(t.sessionId);
        boundary?.sessions.forget(t.sessionId);
      };
      await buildServer().connect(t);
      transport = t;
    }
    await transport.handleRequest(req, res, req.body);
  });
  const url = await listen(app);
  boundary = createBoundary({
    issuer: idp.issuer,
    audience: audience(url),
    clientId: CLIENT,
    agentId: AGENT,
  });
  return { url, boundary };
}

/** A stateless MCP endpoint: a fresh server and transport per request. */
async function statelessApp(): Promise<string> {
  const app = express();
  app.use(express.json());
  let boundary: Boundary | undefined;
  app.post('/mcp', (req, res, next) => {
    const [a, b, c] = (boundary as Boundary).middleware;
    a?.(req, res, () => b?.(req, res, () => c?.(req, res, next)));
  });
  app.post('/mcp', async (req, res) => {
    const t = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    const server = buildServer();
    res.on('close', () => {
      void t.close();
      void server.close();
    });
    await server.connect(t);
    await t.handleRequest(req, res, req.body);
  });
  const url = await listen(app);
  boundary = createBoundary({
    issuer: idp.issuer,
    audience: url,
    clientId: CLIENT,
    agentId: AGENT,
    bindSessions: false,
  });
  return url;
}

async function connect(url: string, token: string, headers: Record<string, string> = {}) {
  const client = new Client({ name: 'ts-test-chat', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { authorization: `Bearer ${token}`, ...headers } },
  });
  await client.connect(transport);
  return { client, transport };
}

function text(result: unknown): string {
  const r = result as { content: { type: string; text: string }[]; isError?: boolean };
  return r.content.map((c) => c.text).join('\n');
}

before(async () => {
  [m, idp] = await Promise.all([startMandate(), startIdP()]);
  const keys = await generateEnvelopeKey();
  const prov = await provision(m, { clientId: CLIENT, jwks: keys.publicJwks });
  const calls: { authorization: string; traceparent: string }[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    calls.push({
      authorization: req.headers.authorization ?? '',
      traceparent: String(req.headers.traceparent ?? ''),
    });
    const claims = decodeJwt((req.headers.authorization ?? '').replace(/^Bearer /, ''));
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ order_id: req.url?.split('/').pop(), status: 'shipped', user: claims.sub }));
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  orders = { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, calls };
  delegator = new Delegator({
    issuer: m.issuer,
    clientId: CLIENT,
    clientAuth: { method: 'client_secret_basic', clientSecret: prov.mcpSecret },
    signer: createSigner({ key: keys.privateJwk, clientId: CLIENT, issuer: m.issuer }),
    audiences: { orders_api: { baseUrls: [`${orders.url}/orders`], scopes: ['orders:read'] } },
  });
});

after(async () => {
  for (const s of [...servers, orders?.server]) s?.closeAllConnections?.();
  for (const s of [...servers, orders?.server]) s?.close();
  await Promise.all([m?.stop(), idp?.close()]);
});

const user = (sub: string, aud: string) =>
  idp.mint({ sub, aud, tenant: TENANT, scope: 'orders:read balance:read' });

function assertNoToken(token: string, seen: unknown) {
  const signature = token.split('.')[2] as string;
  const strings = reachableStrings(seen);
  assert.ok(strings.length > 20, 'the walk saw the request');
  const leaks = strings.filter((s) => s.includes(signature) || s.includes(token));
  assert.deepEqual(leaks, [], 'the user token is reachable from a tool');
  assert.ok(
    !strings.some((s) => s.toLowerCase() === 'authorization'),
    'an Authorization header is reachable from a tool',
  );
}

test('stateful: tools get the identity and never the token; the session belongs to its user', async () => {
  const { url } = await statefulApp((u) => u);
  const token = await user('alice', url);
  const trace = '0af7651916cd43dd8448eb211c80319c';
  const { client, transport } = await connect(url, token, { traceparent: `00-${trace}-b7ad6b7169203331-01` });
  try {
    extras.length = 0;
    const res = await client.callTool({ name: 'probe', arguments: {} });
    const probe = JSON.parse(text(res)) as Probe;
    assert.deepEqual(probe.identity.actor, { type: 'user', sub: 'alice', tenant: TENANT });
    assert.deepEqual(probe.identity.agent, { type: 'mcp_agent', id: AGENT, client_id: CLIENT });
    assert.equal(probe.identity.issuer, idp.issuer);
    assert.deepEqual(probe.identity.scopes, ['orders:read', 'balance:read']);
    assert.equal(probe.identity.session.trace_id, trace);
    assert.equal(probe.identity.parentSpanId, 'b7ad6b7169203331');
    assert.equal(probe.identity.session.id, transport.sessionId);
    assert.equal(probe.sessionId, transport.sessionId);
    assert.ok(probe.headerNames.includes('traceparent'), 'the request headers are there');
    assert.equal(extras.length, 1);
    assertNoToken(token, extras[0]);
    const authInfo = (extras[0] as { authInfo: { token: string } }).authInfo;
    assert.equal(authInfo.token, '');

    // A trace in the request's _meta wins over the HTTP header's.
    const metaTrace = '11111111111111111111111111111111';
    const viaMeta = JSON.parse(
      text(
        await client.callTool({
          name: 'probe',
          arguments: {},
          _meta: { traceparent: `00-${metaTrace}-2222222222222222-00` },
        }),
      ),
    ) as Probe;
    assert.equal(viaMeta.identity.session.trace_id, metaTrace);
    assert.equal(viaMeta.identity.traceFlags, '00');

    // Bob cannot drive alice's session, even with a valid token of his own.
    const bobToken = await user('bob', url);
    const hijack = await fetch(url, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${bobToken}`,
        'mcp-session-id': transport.sessionId as string,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': '2025-06-18',
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 9,
        method: 'tools/call',
        params: { name: 'probe', arguments: {} },
      }),
    });
    assert.equal(hijack.status, 404);
    // A session id the boundary never bound is "not found" too.
    const unknown = await fetch(url, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'mcp-session-id': 'made-up',
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 10, method: 'tools/list' }),
    });
    assert.equal(unknown.status, 404);
  } finally {
    await client.close();
  }
});

test('stateless: the same guarantees without sessions', async () => {
  const url = await statelessApp();
  const token = await user('alice', url);
  const { client } = await connect(url, token);
  try {
    extras.length = 0;
    const probe = JSON.parse(text(await client.callTool({ name: 'probe', arguments: {} }))) as Probe;
    assert.equal(probe.identity.actor.sub, 'alice');
    assert.match(
      probe.identity.session.trace_id ?? '',
      /^[0-9a-f]{32}$/,
      'a trace id is minted when none came in',
    );
    assert.equal(extras.length, 1);
    assertNoToken(token, extras[0]);
  } finally {
    await client.close();
  }
});

test('tools call the downstream API through the delegator; refusals are tool errors that say why', async () => {
  const { url } = await statefulApp((u) => u);
  const alice = await connect(url, await user('alice', url), {
    traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  });
  const carol = await connect(url, await user('carol', url));
  try {
    const ok = await alice.client.callTool({ name: 'get_order_status', arguments: { order_id: 'A-1001' } });
    assert.ok(!ok.isError, text(ok));
    assert.deepEqual(JSON.parse(text(ok)), { order_id: 'A-1001', status: 'shipped', user: 'alice' });
    const call = orders.calls.at(-1);
    assert.ok(call);
    const claims = decodeJwt(call.authorization.replace(/^Bearer /, ''));
    assert.equal(claims.sub, 'alice');
    assert.deepEqual(claims.act, { sub: AGENT, client_id: CLIENT });
    assert.equal(claims.trace_id, '0af7651916cd43dd8448eb211c80319c');
    assert.match(call.traceparent, /^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01$/);
    const denied = await carol.client.callTool({
      name: 'get_order_status',
      arguments: { order_id: 'C-3001' },
    });
    assert.equal(denied.isError, true);
    assert.match(text(denied), /Mandate refused a token for orders_api: no_active_grant/);
  } finally {
    await alice.client.close();
    await carol.client.close();
  }
});

function rawPost(
  url: string,
  headers: Record<string, string | string[]>,
): Promise<{ status: number; challenge: string }> {
  return new Promise((ok, fail) => {
    const req = httpRequest(url, { method: 'POST', headers }, (res) => {
      res.resume();
      ok({ status: res.statusCode ?? 0, challenge: String(res.headers['www-authenticate'] ?? '') });
    });
    req.on('error', fail);
    req.end(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }));
  });
}

test('the boundary refuses what it must', async () => {
  const { url } = await statefulApp((u) => u);
  const token = await user('alice', url);
  const json = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
  const none = await rawPost(url, json);
  assert.equal(none.status, 401);
  assert.match(none.challenge, /^Bearer /);
  const twice = await rawPost(url, { ...json, authorization: [`Bearer ${token}`, 'Bearer other'] });
  assert.equal(twice.status, 400);
  const inUrl = await rawPost(`${url}?access_token=${token}`, json);
  assert.equal(inUrl.status, 400);
  const elsewhere = await rawPost(url, {
    ...json,
    authorization: `Bearer ${await user('alice', 'https://other-mcp.test/mcp')}`,
  });
  assert.equal(elsewhere.status, 401);
  assert.match(elsewhere.challenge, /invalid_token/);
  const noTenant = await rawPost(url, {
    ...json,
    authorization: `Bearer ${await idp.mint({ sub: 'alice', aud: url })}`,
  });
  assert.equal(noTenant.status, 401);
  const expired = await rawPost(url, {
    ...json,
    authorization: `Bearer ${await idp.mint({ sub: 'alice', aud: url, tenant: TENANT }, -120)}`,
  });
  assert.equal(expired.status, 401);
  // The token was good: the same request with it alone is let through to the MCP handler.
  const good = await rawPost(url, { ...json, authorization: `Bearer ${token}` });
  assert.equal(good.status, 404, 'past the boundary, the app answers: no session, not an initialize');
});
