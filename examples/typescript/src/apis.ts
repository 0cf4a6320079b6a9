// The demo's downstream APIs on @mandatehq/mandate/downstream: each verifies Mandate tokens for its
// own audience, checks the scope its route needs, answers only for the user the token names, and
// records what it saw (user, agent, mode, trace) so the demo can show it.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createVerifier, type Principal, principalOf, protect } from '@mandatehq/mandate/downstream';
import express from 'express';

export interface Seen {
  api: string;
  principal: Principal;
  traceparent: string;
}

const ORDERS: Record<string, Record<string, string>> = {
  'acme/alice': { 'A-1001': 'shipped', 'A-1002': 'processing' },
  'acme/bob': { 'B-2001': 'delivered' },
  'acme/carol': { 'C-3001': 'cancelled' },
};
const BALANCES: Record<string, string> = { 'acme/alice': '1250.00 EUR', 'acme/bob': '-20.50 EUR' };

async function listen(app: express.Express): Promise<{ url: string; server: Server }> {
  const server = createServer(app);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

/** The orders API (audience orders_api): GET /orders/:id, scope orders:read, checked online so a revoked grant stops it at once. */
export async function startOrders(issuer: string, introspection: { clientId: string; clientSecret: string }, seen: Seen[]) {
  const verifier = createVerifier({ issuer, audience: 'orders_api', introspection });
  const app = express();
  app.get('/orders/:id', protect(verifier, { scopes: ['orders:read'], online: true }), (req, res) => {
    const p = principalOf(req) as Principal;
    seen.push({ api: 'orders_api', principal: p, traceparent: String(req.headers.traceparent ?? '') });
    const status = ORDERS[`${p.tenant}/${p.user}`]?.[req.params.id ?? ''];
    // Another user's order is "not found", not "forbidden": no hint that it exists.
    if (!status) res.status(404).json({ error: 'order not found' });
    else res.json({ order_id: req.params.id, status, user: p.user });
  });
  return listen(app);
}

/** The billing API (audience billing_api): GET /balance, scope balance:read, verified offline through the JWKS. */
export async function startBilling(issuer: string, seen: Seen[]) {
  const verifier = createVerifier({ issuer, audience: 'billing_api' });
  const app = express();
  app.get('/balance', protect(verifier, { scopes: ['balance:read'] }), (req, res) => {
    const p = principalOf(req) as Principal;
    seen.push({ api: 'billing_api', principal: p, traceparent: String(req.headers.traceparent ?? '') });
    res.json({ user: p.user, balance: BALANCES[`${p.tenant}/${p.user}`] ?? '0.00 EUR' });
  });
  return listen(app);
}
