// A real Mandate for integration tests: the binary built from this repository
// (scripts/build-mandate.mjs, or MANDATE_BIN), SQLite in a temporary directory, loopback ports,
// provisioned over /admin/v1 with the bootstrap admin secret.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root (this file runs from build/test/helpers). */
export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
/** The repository root. */
export const repoRoot = resolve(packageRoot, '../..');

export function mandateBinary(): string {
  return process.env.MANDATE_BIN || join(packageRoot, 'build', 'mandate');
}

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => ok(port));
    });
  });
}

export interface RunningMandate {
  issuer: string;
  adminUrl: string;
  adminSecret: string;
  /** Calls /admin/v1 with an admin token; throws on a non-2xx answer. */
  admin<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  /** The output the server printed, for failure messages. */
  log(): string;
  stop(): Promise<void>;
}

export async function startMandate(): Promise<RunningMandate> {
  const dir = await mkdtemp(join(tmpdir(), 'mandate-ts-'));
  const adminSecret = randomBytes(24).toString('hex');
  let out = '';
  let child: ChildProcess | undefined;
  for (let attempt = 0; ; attempt++) {
    const [pub, adm] = [await freePort(), await freePort()];
    const issuer = `http://127.0.0.1:${pub}`;
    child = spawn(mandateBinary(), ['--database', join(dir, 'm.db')], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? dir,
        MANDATE_PUBLIC_ADDR: `127.0.0.1:${pub}`,
        MANDATE_ADMIN_ADDR: `127.0.0.1:${adm}`,
        MANDATE_ISSUER: issuer,
        MANDATE_BOOTSTRAP_ADMIN_SECRET: adminSecret,
        MANDATE_LOG_FORMAT: 'text',
        MANDATE_LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
    });
    child.stderr?.on('data', (b: Buffer) => {
      out += b.toString();
    });
    const exited = new Promise<number | null>((ok) => child?.once('exit', (code) => ok(code)));
    const ready = await waitReady(issuer, exited);
    if (ready) {
      const c = child;
      const token = await adminToken(issuer, adminSecret);
      const adminUrl = `http://127.0.0.1:${adm}`;
      return {
        issuer,
        adminUrl,
        adminSecret,
        log: () => out,
        async admin<T>(method: string, path: string, body?: unknown): Promise<T> {
          const res = await fetch(`${adminUrl}/admin/v1${path}`, {
            method,
            headers: {
              authorization: `Bearer ${token}`,
              ...(body === undefined ? {} : { 'content-type': 'application/json' }),
            },
            ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          });
          const text = await res.text();
          if (!res.ok) throw new Error(`admin ${method} ${path}: HTTP ${res.status}: ${text}`);
          return (text ? JSON.parse(text) : undefined) as T;
        },
        async stop() {
          if (c.exitCode === null) {
            c.kill('SIGTERM');
            const timer = setTimeout(() => c.kill('SIGKILL'), 5000);
            await exited;
            clearTimeout(timer);
          }
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    // A port taken between freePort and the bind: try again on others, a few times.
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
    if (attempt >= 2) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`Mandate did not become ready:\n${out}`);
    }
  }
}

async function waitReady(issuer: string, exited: Promise<number | null>): Promise<boolean> {
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !gone) {
    try {
      const res = await fetch(`${issuer}/readyz`);
      if (res.ok) return true;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

async function adminToken(issuer: string, secret: string): Promise<string> {
  const res = await fetch(`${issuer}/oauth2/token`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${btoa(`mandate-admin:${secret}`)}`,
    },
    body: 'grant_type=client_credentials',
  });
  const body = (await res.json()) as { access_token?: string };
  if (!res.ok || !body.access_token) throw new Error(`admin token: HTTP ${res.status}`);
  return body.access_token;
}
