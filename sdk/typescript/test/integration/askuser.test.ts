// askUser with the official MCP SDK over streamable HTTP, a test IdP and a real Mandate: a tool
// refused for lack of a grant answers a client that declared URL-mode elicitation with the
// -32042 error naming Mandate's consent page, and any other client with a tool error whose text
// carries the link; once an admin approves the request, the same call succeeds.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  type ClientCapabilities,
  ErrorCode,
  isInitializeRequest,
  McpError,
  UrlElicitationRequiredError,
} from '@modelcontextprotocol/sdk/types.js';
import express from 'express';
import { decodeJwt } from 'jose';
import { Delegator } from '../../src/delegator/index.js';
import { createSigner, generateEnvelopeKey } from '../../src/envelope/index.js';
import { ClientError, GrantRequiredError } from '../../src/errors/index.js';
import {
  askUser,
  type Boundary,
  ConsentRequiredError,
  createBoundary,
  linkMessage,
  supportsUrlElicitation,
  withIdentity,
} from '../../src/mcp/index.js';
import { startIdP, type TestIdP } from '../helpers/idp.js';
import { type RunningMandate, startMandate } from '../helpers/mandate.js';
import { AGENT, provision, TENANT } from '../helpers/provision.js';

const CLIENT = 'ts-ask-mcp';
const DOCS = 'docs_api';
const PURPOSE = 'Summarise your documents';
let m: RunningMandate;
let idp: TestIdP;
let delegator: Delegator;
const servers: Server[] = [];
/** What each tool call's askUser answered, for the test to inspect. */
const answers: unknown[] = [];

function buildServer(): McpServer {
  const server = new McpServer({ name: 'ts-ask-test', version: '1.0.0' });
  const tool = (name: string, audience: string, scopes: string[]) =>
    server.registerTool(
      name,
      { description: `reads ${audience} as the user` },
      withIdentity(async (user) => {
        try {
          const tok = decodeJwt(await delegator.token(user, audience, { scopes }));
          return { content: [{ type: 'text', text: `read as ${tok.sub} under ${tok.grant_id}` }] };
        } catch (e) {
          const answer = await askUser(delegator, server, user, e, {
            audiences: [audience],
            scopes,
            purpose: PURPOSE,
          });
          answers.push(answer);
          throw answer;
        }
      }),
    );
  tool('read_docs', DOCS, ['docs:read']);
  tool('read_orders', 'orders_api', ['orders:read']);
  return server;
}

async function listen(app: express.Express): Promise<string> {
  const server = createServer(app);
  servers.push(server);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;
}

/** A stateful MCP endpoint behind the boundary: one server per session, which saw the client's initialize. */
async function statefulApp(): Promise<string> {
  const app = express();
  app.use(express.json());
  const transports = new Map<string, StreamableHTTPServerTransport>();
  let boundary: Boundary | undefined;
  app.post('/mcp', (req, res, next) => {
    const [a, b, c] = (boundary as Boundary).middleware;
    a?.(req, res, () => b?.(req, res, () => c?.(req, res, next)));
  });
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
  boundary = createBoundary({ issuer: idp.issuer, audience: url, clientId: CLIENT, agentId: AGENT });
  return url;
}

/** A stateless endpoint: a fresh server per request, which never sees the client's capabilities. */
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

async function connect(url: string, sub: string, capabilities: ClientCapabilities = {}) {
  const token = await idp.mint({ sub, aud: url, tenant: TENANT, scope: 'docs:read orders:read' });
  const client = new Client({ name: 'ts-ask-chat', version: '1.0.0' }, { capabilities });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(url), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    }),
  );
  return client;
}

function text(result: unknown): string {
  return (result as { content: { text: string }[] }).content.map((c) => c.text).join('\n');
}

const LINK = () => new RegExp(`${m.issuer}/consent/(gr_[A-Za-z0-9_-]+)`);

before(async () => {
  [m, idp] = await Promise.all([startMandate(), startIdP()]);
  const keys = await generateEnvelopeKey();
  const prov = await provision(m, { clientId: CLIENT, jwks: keys.publicJwks, users: {} });
  await m.admin('POST', '/audiences', {
    id: DOCS,
    name: 'Docs API',
    scopes: ['docs:read'],
    allowed_modes: ['on_behalf_of'],
    user_consent: 'allowed',
  });
  delegator = new Delegator({
    issuer: m.issuer,
    clientId: CLIENT,
    clientAuth: { method: 'client_secret_basic', clientSecret: prov.mcpSecret },
    signer: createSigner({ key: keys.privateJwk, clientId: CLIENT, issuer: m.issuer }),
    audiences: {
      [DOCS]: { baseUrls: ['http://127.0.0.1:1/'] },
      orders_api: { baseUrls: ['http://127.0.0.1:1/'] },
    },
  });
});

after(async () => {
  for (const s of servers) s.closeAllConnections?.();
  for (const s of servers) s.close();
  await Promise.all([m?.stop(), idp?.close()]);
});

test('a client that supports URL elicitation is asked through it; after approval the call succeeds', async () => {
  const url = await statefulApp();
  const client = await connect(url, 'carol', { elicitation: { url: {} } });
  try {
    answers.length = 0;
    const err = await client.callTool({ name: 'read_docs', arguments: {} }).then(
      (r) => assert.fail(`a result instead of an elicitation: ${text(r)}`),
      (e: unknown) => e,
    );
    assert.ok(err instanceof UrlElicitationRequiredError, String(err));
    assert.equal(err.code, ErrorCode.UrlElicitationRequired);
    assert.equal(err.code, -32042);
    const [el] = err.elicitations;
    assert.ok(el);
    assert.equal(el.mode, 'url');
    const id = LINK().exec(el.url)?.[1];
    assert.ok(id, el.url);
    assert.equal(el.url, `${m.issuer}/consent/${id}`);
    assert.equal(el.elicitationId, id, 'the request id identifies the elicitation');
    assert.equal(el.message, `${PURPOSE}. Approve access in your browser: ${el.url}`);
    // What the tool threw on the server side: the SDK's error, for the client's own request.
    assert.ok(answers[0] instanceof UrlElicitationRequiredError);

    const stored = await m.admin<{ subject: string; agent_id: string; audiences: string[]; purpose: string }>(
      'GET',
      `/grant-requests/${id}`,
    );
    assert.deepEqual(
      [stored.subject, stored.agent_id, stored.audiences, stored.purpose],
      ['carol', AGENT, [DOCS], PURPOSE],
    );
    await m.admin('POST', `/grant-requests/${id}/approve`);
    const status = await delegator.grantRequestStatus(id);
    assert.equal(status.status, 'approved');
    const ok = await client.callTool({ name: 'read_docs', arguments: {} });
    assert.ok(!ok.isError, text(ok));
    assert.equal(text(ok), `read as carol under ${status.grantId}`);
  } finally {
    await client.close();
  }
});

test('a client without URL elicitation gets a tool error that carries the link', async () => {
  const url = await statefulApp();
  // Form-mode elicitation alone is not enough: the link must be opened, not filled in.
  for (const [sub, capabilities] of [
    ['dave', {}],
    ['erin', { elicitation: { form: {} } }],
  ] as const) {
    const client = await connect(url, sub, capabilities);
    try {
      answers.length = 0;
      const res = await client.callTool({ name: 'read_docs', arguments: {} });
      assert.equal(res.isError, true, sub);
      const id = LINK().exec(text(res))?.[1];
      assert.ok(id, text(res));
      assert.match(text(res), /^Mandate refused a token for docs_api: no_active_grant/);
      assert.ok(text(res).endsWith(`${PURPOSE}. Approve access in your browser: ${m.issuer}/consent/${id}`));
      const answer = answers[0];
      assert.ok(answer instanceof ConsentRequiredError);
      assert.equal(answer.link.requestId, id);
      assert.ok(answer.cause instanceof GrantRequiredError);
      assert.equal((await delegator.grantRequestStatus(id)).status, 'pending');
    } finally {
      await client.close();
    }
  }
});

test('a stateless server cannot know the capabilities: the link goes in a tool error', async () => {
  const url = await statelessApp();
  const client = await connect(url, 'fay', { elicitation: { url: {} } });
  try {
    const res = await client.callTool({ name: 'read_docs', arguments: {} });
    assert.equal(res.isError, true);
    assert.match(text(res), LINK());
  } finally {
    await client.close();
  }
});

test('what askUser leaves alone, and a grant request Mandate refuses', async () => {
  const url = await statefulApp();
  const client = await connect(url, 'gus', { elicitation: { url: {} } });
  try {
    answers.length = 0;
    // orders_api is admin_only: no endpoint in the refusal, so nothing is asked; the refusal is
    // the tool error.
    const res = await client.callTool({ name: 'read_orders', arguments: {} });
    assert.equal(res.isError, true);
    assert.match(text(res), /^Mandate refused a token for orders_api: no_active_grant/);
    assert.ok(answers[0] instanceof GrantRequiredError);
    const listed = await m.admin<{ items: unknown[] }>('GET', '/grant-requests?subject=gus');
    assert.equal(listed.items.length, 0, 'no grant request was created');
  } finally {
    await client.close();
  }
  const server = { getClientCapabilities: () => ({ elicitation: { url: {} } }) };
  const id = {
    actor: { type: 'user', sub: 'gus', tenant: TENANT },
    agent: { type: 'mcp_agent', id: AGENT, client_id: CLIENT },
    session: { id: 's' },
    scopes: [],
    mode: 'on_behalf_of',
  } as const;
  const other = new Error('boom');
  assert.equal(
    await askUser(delegator, server, { ...id, scopes: [] }, other, {
      audiences: [DOCS],
      scopes: ['docs:read'],
      purpose: '',
    }),
    other,
  );
  // A refusal the user could lift, but the request asks for more than the audience lets users
  // grant: Mandate's refusal of the request comes back, with what the tool was refused as cause.
  const refused = await delegator.token({ ...id, scopes: ['docs:read'] }, DOCS).catch((e: unknown) => e);
  assert.ok(refused instanceof GrantRequiredError && refused.grantRequestEndpoint);
  const answer = await askUser(delegator, server, { ...id, scopes: [] }, refused, {
    audiences: [DOCS],
    scopes: ['docs:read'],
    duration: 365 * 86400,
    purpose: 'too long',
  });
  assert.ok(answer instanceof ClientError);
  assert.equal(answer.reason, 'consent_duration_too_long');
  assert.equal(answer.cause, refused);
  assert.ok(!(answer instanceof McpError));
  assert.equal(supportsUrlElicitation({ getClientCapabilities: () => undefined }), false);
  assert.equal(supportsUrlElicitation({ server }), true);
  assert.equal(
    linkMessage({
      requestId: 'gr_1',
      url: 'https://m/consent/gr_1',
      verificationUri: '',
      expiresAt: 0,
      interval: 5,
    }),
    'Approve access in your browser: https://m/consent/gr_1',
  );
});
