// The demo's story, the same as `go run ./examples/demo`: Mandate, a demo IdP, the MCP server and
// two APIs on loopback ports; alice, bob and carol call the tools; an admin revokes alice's grant;
// then what each side saw — the tools, the APIs (from their verified tokens) and Mandate's audit.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Delegator } from '@mandatehq/mandate/delegator';
import { createSigner, generateEnvelopeKey } from '@mandatehq/mandate/envelope';
import { type Seen, startBilling, startOrders } from './apis.js';
import { startIdP } from './idp.js';
import { startMandate } from './mandate.js';
import { startMCP } from './mcpserver.js';

const CLIENT = 'demo-mcp';
const AGENT = 'support-agent';
const TENANT = 'acme';

export interface Step {
  user: string;
  tool: string;
  args: Record<string, string>;
  traceId: string;
  ok: boolean;
  text: string;
}

export interface AuditRecord {
  outcome: string;
  reason: string;
  actor_type?: string;
  actor_sub: string;
  tenant: string;
  agent_id: string;
  delegation_mode: string;
  audience: string;
  trace_id: string;
}

export interface DemoResult {
  steps: Step[];
  seen: Seen[];
  audit: AuditRecord[];
}

const hex = (n: number) => [...crypto.getRandomValues(new Uint8Array(n))].map((b) => b.toString(16).padStart(2, '0')).join('');

export async function runDemo(print: (line: string) => void): Promise<DemoResult> {
  const mandate = await startMandate();
  const idp = await startIdP();
  const closers: (() => unknown)[] = [() => idp.close(), () => mandate.stop()];
  try {
    // Provision Mandate over /admin/v1: audiences, the MCP server's client with its envelope key,
    // the orders API's introspection client, and grants (alice: both APIs; bob: orders only).
    const envelopeKey = await generateEnvelopeKey();
    for (const aud of [
      { id: 'orders_api', name: 'Orders API', scopes: ['orders:read'], allowed_modes: ['on_behalf_of'] },
      { id: 'billing_api', name: 'Billing API', scopes: ['balance:read'], allowed_modes: ['on_behalf_of'] },
    ]) {
      await mandate.admin('POST', '/audiences', aud);
    }
    const mcpClient = await mandate.admin<{ client_secret: string }>('POST', '/clients', {
      client_id: CLIENT,
      name: 'Demo MCP server (TypeScript)',
      jwks: envelopeKey.publicJwks,
      grant_types: ['urn:ietf:params:oauth:grant-type:token-exchange'],
      allowed_tenants: [TENANT],
    });
    const ordersClient = await mandate.admin<{ client_secret: string }>('POST', '/clients', {
      client_id: 'orders-api',
      name: 'Orders API (introspection)',
      grant_types: ['client_credentials'],
    });
    const grants: Record<string, string> = {};
    for (const [user, audiences, scopes] of [
      ['alice', ['orders_api', 'billing_api'], ['orders:read', 'balance:read']],
      ['bob', ['orders_api'], ['orders:read']],
    ] as const) {
      const g = await mandate.admin<{ id: string }>('POST', '/grants', {
        tenant: TENANT,
        subject: user,
        client_id: CLIENT,
        agent_id: AGENT,
        audiences,
        scopes,
        modes: ['on_behalf_of'],
        expires_at: new Date(Date.now() + 86_400_000).toISOString().replace(/\.\d+Z$/, 'Z'),
      });
      grants[user] = g.id;
    }

    const seen: Seen[] = [];
    const orders = await startOrders(mandate.issuer, { clientId: 'orders-api', clientSecret: ordersClient.client_secret }, seen);
    const billing = await startBilling(mandate.issuer, seen);
    const delegator = new Delegator({
      issuer: mandate.issuer,
      clientId: CLIENT,
      clientAuth: { method: 'client_secret_basic', clientSecret: mcpClient.client_secret },
      signer: createSigner({ key: envelopeKey.privateJwk, clientId: CLIENT, issuer: mandate.issuer }),
      audiences: {
        orders_api: { baseUrls: [`${orders.url}/orders`], scopes: ['orders:read'] },
        billing_api: { baseUrls: [`${billing.url}/balance`], scopes: ['balance:read'] },
      },
    });
    const mcp = await startMCP({ idpIssuer: idp.issuer, clientId: CLIENT, agentId: AGENT, delegator, ordersUrl: orders.url, billingUrl: billing.url });
    closers.unshift(() => {
      for (const s of [mcp.server, orders.server, billing.server]) {
        s.closeAllConnections();
        s.close();
      }
    });

    print(`Mandate      ${mandate.issuer} (admin ${mandate.adminUrl}, SQLite in ${mandate.dir})`);
    print(`demo IdP     ${idp.issuer}`);
    print(`MCP server   ${mcp.url}`);
    print(`orders API   ${orders.url} (introspection)`);
    print(`billing API  ${billing.url} (offline JWKS)`);
    print('Provisioned: audiences orders_api, billing_api; client demo-mcp; grants alice→orders_api+billing_api, bob→orders_api.\n');

    const steps: Step[] = [];
    const call = async (user: string, tool: string, args: Record<string, string> = {}) => {
      // An MCP client as a chat app would run it: the user's token, and a traceparent per call.
      const traceId = hex(16);
      const client = new Client({ name: 'demo-chat-app', version: '1.0.0' });
      const transport = new StreamableHTTPClientTransport(new URL(mcp.url), {
        requestInit: { headers: { authorization: `Bearer ${await idp.token(user, mcp.url)}` } },
      });
      await client.connect(transport);
      try {
        const res = await client.callTool({ name: tool, arguments: args, _meta: { traceparent: `00-${traceId}-${hex(8)}-01` } });
        const text = (res.content as { type: string; text?: string }[]).map((c) => c.text ?? '').join(' ');
        const step = { user, tool, args, traceId, ok: !res.isError, text };
        steps.push(step);
        const label = args.order_id ? `${tool}(${args.order_id})` : tool;
        print(`${user.padEnd(6)} ${label.padEnd(26)} trace ${traceId.slice(0, 12)}…  ${step.ok ? 'ok   ' : 'ERROR'} ${text.replace(/\s+/g, ' ').slice(0, 150)}`);
      } finally {
        await transport.terminateSession().catch(() => {});
        await client.close();
      }
    };
    await call('alice', 'get_order_status', { order_id: 'A-1001' });
    await call('alice', 'get_balance');
    await call('bob', 'get_order_status', { order_id: 'B-2001' });
    await call('bob', 'get_order_status', { order_id: 'A-1001' });
    await call('bob', 'get_balance');
    await call('carol', 'get_order_status', { order_id: 'C-3001' });
    print("\n-- admin revokes alice's grant --");
    await mandate.admin('POST', `/grants/${grants.alice}/revoke`, { reason: 'demo: access withdrawn' });
    await call('alice', 'get_order_status', { order_id: 'A-1002' });

    print('\nWhat the downstream APIs saw (from their verified tokens):');
    table(print, ['API', 'ACTOR', 'USER', 'AGENT', 'MODE', 'TOKEN TRACE', 'TRACEPARENT'], seen.map((s) => [
      s.api, s.principal.actorType, s.principal.user ?? '-', s.principal.agent?.sub ?? '-', s.principal.mode ?? '-', s.principal.traceId ?? '-', s.traceparent,
    ]));

    const page = await mandate.admin<{ items: AuditRecord[] }>('GET', '/audit?event=token_exchange&limit=100');
    const audit = page.items.reverse();
    print('\nMandate audit trail (GET /admin/v1/audit?event=token_exchange):');
    table(print, ['OUTCOME', 'REASON', 'USER', 'AGENT', 'MODE', 'AUDIENCE', 'TRACE ID'], audit.map((r) => [
      r.outcome, r.reason || '-', `${r.tenant}/${r.actor_sub}`, r.agent_id, r.delegation_mode, r.audience, r.trace_id,
    ]));
    return { steps, seen, audit };
  } finally {
    for (const close of closers) await close();
  }
}

function table(print: (line: string) => void, head: string[], rows: string[][]) {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  for (const r of [head, ...rows]) print(r.map((c, i) => (c ?? '').padEnd(widths[i] ?? 0)).join('  ').trimEnd());
}
