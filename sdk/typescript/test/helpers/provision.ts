// Provisions a running Mandate the way the demo does: two audiences, an MCP client whose envelope
// keys the test generated, an introspection client for the orders API, and grants
// (alice: orders_api + billing_api; bob: orders_api only; carol: none).
import type { JWK } from 'jose';
import type { RunningMandate } from './mandate.js';

export const TENANT = 'acme';
export const AGENT = 'support-agent';

export interface Provisioned {
  mcpSecret: string;
  ordersSecret: string;
  grants: Record<string, string>;
}

export async function provision(
  m: RunningMandate,
  opts: { clientId: string; jwks: { keys: JWK[] }; authMethod?: string; users?: Record<string, string[]> },
): Promise<Provisioned> {
  for (const aud of [
    {
      id: 'orders_api',
      name: 'Orders API',
      scopes: ['orders:read', 'orders:write'],
      allowed_modes: ['on_behalf_of'],
    },
    { id: 'billing_api', name: 'Billing API', scopes: ['balance:read'], allowed_modes: ['on_behalf_of'] },
  ]) {
    await m.admin('POST', '/audiences', aud).catch((e: Error) => {
      if (!/HTTP 409/.test(e.message)) throw e;
    });
  }
  const mcp = await m.admin<{ client_secret?: string }>('POST', '/clients', {
    client_id: opts.clientId,
    name: 'TypeScript MCP server',
    token_endpoint_auth_method: opts.authMethod ?? 'client_secret_basic',
    jwks: opts.jwks,
    grant_types: ['urn:ietf:params:oauth:grant-type:token-exchange'],
    allowed_tenants: [TENANT],
  });
  const orders = await m.admin<{ client_secret?: string }>('POST', '/clients', {
    client_id: `${opts.clientId}-orders-api`,
    name: 'Orders API (introspection)',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
  });
  const grants: Record<string, string> = {};
  const users = opts.users ?? { alice: ['orders_api', 'billing_api'], bob: ['orders_api'] };
  for (const [user, auds] of Object.entries(users)) {
    const scopes = auds.includes('billing_api') ? ['orders:read', 'balance:read'] : ['orders:read'];
    const g = await m.admin<{ id: string }>('POST', '/grants', {
      tenant: TENANT,
      subject: user,
      client_id: opts.clientId,
      agent_id: AGENT,
      audiences: auds,
      scopes,
      modes: ['on_behalf_of'],
      expires_at: new Date(Date.now() + 24 * 3600_000).toISOString().replace(/\.\d+Z$/, 'Z'),
    });
    grants[user] = g.id;
  }
  return { mcpSecret: mcp.client_secret ?? '', ordersSecret: orders.client_secret ?? '', grants };
}
