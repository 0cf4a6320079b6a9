// The demo identity provider: it signs user access tokens (ES256, RFC 9068 shape) for the MCP
// server and serves its JWKS. It stands in for the IdP an MCP server already trusts (Okta, Entra,
// Keycloak…); it does no login at all and is for demos only.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

export const USERS: Record<string, { tenant: string; scopes: string[] }> = {
  alice: { tenant: 'acme', scopes: ['orders:read', 'balance:read'] },
  bob: { tenant: 'acme', scopes: ['orders:read', 'balance:read'] },
  carol: { tenant: 'acme', scopes: ['orders:read', 'balance:read'] },
};

export interface IdP {
  issuer: string;
  /** A token for user, for the MCP server at resource (what an MCP client gets after OAuth). */
  token(user: string, resource: string): Promise<string>;
  close(): void;
}

export async function startIdP(): Promise<IdP> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'idp-1', alg: 'ES256', use: 'sig' }] });
  const server: Server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/.well-known/jwks.json') {
      res.setHeader('content-type', 'application/json');
      res.end(jwks);
      return;
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    async token(user, resource) {
      const u = USERS[user];
      if (!u) throw new Error(`no demo user ${user}`);
      return new SignJWT({ tenant: u.tenant, scope: u.scopes.join(' '), client_id: 'demo-chat-app' })
        .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'idp-1' })
        .setIssuer(issuer)
        .setSubject(user)
        .setAudience(resource)
        .setIssuedAt()
        .setExpirationTime('15m')
        .setJti(crypto.randomUUID())
        .sign(privateKey);
    },
    close: () => server.close(),
  };
}
