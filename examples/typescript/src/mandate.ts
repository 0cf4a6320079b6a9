// Mandate for the demo: the binary built from this repository (go build ./cmd/mandate, or
// MANDATE_BIN), SQLite in a temporary directory, loopback ports, and a small admin API client.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export interface Mandate {
  issuer: string;
  adminUrl: string;
  dir: string;
  admin<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => ok(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

export async function startMandate(): Promise<Mandate> {
  const dir = await mkdtemp(join(tmpdir(), 'mandate-ts-demo-'));
  let bin = process.env.MANDATE_BIN;
  if (!bin) {
    bin = join(dir, 'mandate');
    execFileSync('go', ['build', '-o', bin, './cmd/mandate'], {
      cwd: repoRoot,
      stdio: 'inherit',
      env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/local/go/bin` },
    });
  }
  const secret = randomBytes(24).toString('hex');
  const [pub, adm] = [await freePort(), await freePort()];
  const issuer = `http://127.0.0.1:${pub}`;
  const adminUrl = `http://127.0.0.1:${adm}`;
  let log = '';
  const child: ChildProcess = spawn(bin, ['--database', join(dir, 'm.db')], {
    env: {
      PATH: process.env.PATH ?? '',
      MANDATE_PUBLIC_ADDR: `127.0.0.1:${pub}`,
      MANDATE_ADMIN_ADDR: `127.0.0.1:${adm}`,
      MANDATE_ISSUER: issuer,
      MANDATE_BOOTSTRAP_ADMIN_SECRET: secret,
      MANDATE_LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (b: Buffer) => {
    log += b;
  });
  child.stderr?.on('data', (b: Buffer) => {
    log += b;
  });
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${issuer}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (i > 300 || child.exitCode !== null) {
      await stop();
      throw new Error(`Mandate did not start:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  // An admin token through client_credentials, as the bootstrap admin client.
  const res = await fetch(`${issuer}/oauth2/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${btoa(`mandate-admin:${secret}`)}` },
    body: 'grant_type=client_credentials',
  });
  const { access_token: token } = (await res.json()) as { access_token: string };
  return {
    issuer,
    adminUrl,
    dir,
    stop,
    async admin<T>(method: string, path: string, body?: unknown): Promise<T> {
      const r = await fetch(`${adminUrl}/admin/v1${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await r.text();
      if (!r.ok) throw new Error(`admin ${method} ${path}: HTTP ${r.status}: ${text}`);
      return (text ? JSON.parse(text) : undefined) as T;
    },
  };
}
