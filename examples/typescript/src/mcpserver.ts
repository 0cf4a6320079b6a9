// The demo MCP server: the official SDK over streamable HTTP (stateful), behind the Mandate
// boundary. Its tools read who they act for from the identity — never from their arguments, never
// from a token — and reach the downstream APIs through the delegator, which exchanges the identity
// at Mandate for a token per API.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createBoundary, withIdentity } from '@mandatehq/mandate/mcp';
import type { Delegator } from '@mandatehq/mandate/delegator';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import express from 'express';
import { z } from 'zod';

export interface MCPConfig {
  idpIssuer: string;
  clientId: string;
  agentId: string;
  delegator: Delegator;
  ordersUrl: string;
  billingUrl: string;
}

function tools(cfg: MCPConfig): McpServer {
  const server = new McpServer({ name: 'mandate-demo-mcp', version: '1.0.0' });
  const call = async (res: Response) => {
    const body = await res.text();
    if (!res.ok) throw new Error(`the API answered HTTP ${res.status}: ${res.headers.get('www-authenticate') ?? body}`);
    return { content: [{ type: 'text' as const, text: body }] };
  };
  // No user argument on purpose: the user comes from the boundary, the model cannot choose it.
  server.registerTool(
    'get_order_status',
    { description: "Status of one of the current user's orders.", inputSchema: { order_id: z.string() } },
    withIdentity(async (user, { order_id }) =>
      call(await cfg.delegator.fetch(user, 'orders_api', `${cfg.ordersUrl}/orders/${encodeURIComponent(order_id)}`)),
    ),
  );
  server.registerTool(
    'get_balance',
    { description: "The current user's account balance." },
    withIdentity(async (user) => call(await cfg.delegator.fetch(user, 'billing_api', `${cfg.billingUrl}/balance`))),
  );
  return server;
}

/** Starts the MCP endpoint on a loopback port; returns its URL (…/mcp). */
export async function startMCP(cfg: MCPConfig): Promise<{ url: string; server: Server }> {
  const app = express();
  app.use(express.json());
  const http = createServer(app);
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`;
  const boundary = createBoundary({ issuer: cfg.idpIssuer, audience: url, clientId: cfg.clientId, agentId: cfg.agentId });
  const sessions = new Map<string, StreamableHTTPServerTransport>();

  app.post('/mcp', ...boundary.middleware, async (req, res) => {
    const sid = req.headers['mcp-session-id'];
    let transport = typeof sid === 'string' ? sessions.get(sid) : undefined;
    if (!transport) {
      if (sid !== undefined || !isInitializeRequest(req.body)) {
        res.status(404).json({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null });
        return;
      }
      const t: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        // The new session belongs to the user who opened it: nobody else can drive it.
        sessionIdGenerator: boundary.sessionIdGenerator(req),
        onsessioninitialized: (id) => {
          sessions.set(id, t);
        },
      });
      t.onclose = () => {
        if (t.sessionId) sessions.delete(t.sessionId);
        boundary.sessions.forget(t.sessionId);
      };
      await tools(cfg).connect(t);
      transport = t;
    }
    await transport.handleRequest(req, res, req.body);
  });
  // GET opens the session's server-to-client stream, DELETE ends the session: both for its owner only.
  const existing: express.RequestHandler = async (req, res) => {
    const sid = req.headers['mcp-session-id'];
    const t = typeof sid === 'string' ? sessions.get(sid) : undefined;
    if (!t) {
      res.status(404).end();
      return;
    }
    await t.handleRequest(req, res);
  };
  app.get('/mcp', ...boundary.middleware, existing);
  app.delete('/mcp', ...boundary.middleware, existing);
  return { url, server: http };
}
