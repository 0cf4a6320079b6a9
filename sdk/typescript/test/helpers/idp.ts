// A tiny identity provider for tests: signs user access tokens (ES256, RFC 9068 shape) and serves
// its JWKS on a loopback port. It stands in for the IdP an MCP server already trusts.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWTPayload, SignJWT } from 'jose';

export interface TestIdP {
  issuer: string;
  mint(
    claims: JWTPayload & { sub: string; aud: string },
    ttlSeconds?: number,
    header?: Record<string, unknown>,
  ): Promise<string>;
  jwksFetches: () => number;
  close(): Promise<void>;
}

export async function startIdP(): Promise<TestIdP> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const kid = 'idp-1';
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' }] };
  let fetches = 0;
  const server: Server = createServer((req, res) => {
    if (req.url === '/.well-known/jwks.json') {
      fetches++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(jwks));
      return;
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    jwksFetches: () => fetches,
    async mint(claims, ttlSeconds = 900, header = {}) {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ client_id: 'test-chat-app', ...claims })
        .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid, ...header })
        .setIssuer(issuer)
        .setIssuedAt(now)
        .setExpirationTime(now + ttlSeconds)
        .setJti(crypto.randomUUID())
        .sign(privateKey);
    },
    close: () => new Promise((ok) => server.close(() => ok())),
  };
}
