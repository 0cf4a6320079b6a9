// The shared vectors (sdk-contract §4): testdata/vectors/envelopes.json judged by the TS signer,
// and envelopes the TS signer makes judged by the Go verifier (internal/vectors/cmd/verify-envelope).
// Both files come from the Go side; until they are on this branch these tests are skipped (and say so).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { decodeProtectedHeader, type JWK } from 'jose';
import {
  checkEnvelopeMembers,
  createSigner,
  EnvelopeError,
  type EnvelopeInput,
} from '../src/envelope/index.js';
import { repoRoot } from './helpers/mandate.js';

interface Vector {
  name: string;
  token: string;
  valid: boolean;
  reason: string;
  wire_reason: string;
  signer: 'accept' | 'refuse' | 'n/a';
  claims: Record<string, unknown>;
}
interface VectorFile {
  issuer: string;
  client_id: string;
  now: number;
  max_envelope_lifetime: number;
  jwks: { keys: JWK[] };
  private_jwks: { keys: JWK[] };
  vectors: Vector[];
}

const file = join(repoRoot, 'testdata', 'vectors', 'envelopes.json');
const goTool = join(repoRoot, 'internal', 'vectors', 'cmd', 'verify-envelope');
const missing = existsSync(file) ? false : 'testdata/vectors/envelopes.json is not on this branch yet';

function load(): VectorFile {
  return JSON.parse(readFileSync(file, 'utf8')) as VectorFile;
}

function signerFor(v: VectorFile, kid: string | undefined) {
  const key = v.private_jwks.keys.find((k) => k.kid === kid) ?? v.private_jwks.keys[0];
  assert.ok(key, 'the vectors carry private keys');
  return createSigner({
    key,
    clientId: v.client_id,
    issuer: v.issuer,
    maxLifetime: v.max_envelope_lifetime,
    now: () => v.now * 1000,
  });
}

test('vectors: the TS signer accepts and refuses as the vectors say', { skip: missing }, async () => {
  const v = load();
  let judged = 0;
  for (const vec of v.vectors) {
    if (vec.signer === 'n/a') continue;
    let kid: string | undefined;
    try {
      kid = decodeProtectedHeader(vec.token).kid;
    } catch {
      kid = undefined;
    }
    const signer = signerFor(v, kid);
    const attempt = signer.sign(vec.claims as unknown as EnvelopeInput);
    if (vec.signer === 'accept') {
      await assert.doesNotReject(attempt, vec.name);
    } else {
      await assert.rejects(
        attempt,
        (e: unknown) =>
          e instanceof EnvelopeError && e.reason === vec.reason && e.wireReason === vec.wire_reason,
        `${vec.name}: want refusal ${vec.reason}`,
      );
    }
    judged++;
  }
  assert.ok(judged > 0, 'some vectors concern the signer');
});

test('vectors: valid envelopes pass the member checks', { skip: missing }, () => {
  for (const vec of load().vectors.filter((x) => x.valid)) {
    assert.doesNotThrow(() => checkEnvelopeMembers(vec.claims), vec.name);
  }
});

test(
  'vectors: the Go verifier accepts what the TS signer signs, with every key',
  {
    skip:
      missing ||
      (existsSync(goTool) ? false : 'internal/vectors/cmd/verify-envelope is not on this branch yet'),
  },
  async () => {
    const v = load();
    const valid = v.vectors.find((x) => x.valid && x.signer === 'accept');
    assert.ok(valid, 'a valid vector to re-sign');
    const lines: string[] = [];
    for (const key of v.private_jwks.keys) {
      const token = await signerFor(v, key.kid).sign({
        ...(valid.claims as unknown as EnvelopeInput),
        jti: undefined,
      });
      lines.push(
        JSON.stringify({ token, jwks: v.jwks, client_id: v.client_id, issuer: v.issuer, now: v.now }),
      );
    }
    const run = spawnSync('go', ['run', './internal/vectors/cmd/verify-envelope'], {
      cwd: repoRoot,
      input: `${lines.join('\n')}\n`,
      encoding: 'utf8',
      env: { ...process.env, PATH: `${process.env.PATH}:/usr/local/go/bin` },
    });
    assert.equal(run.status, 0, run.stderr);
    const answers = run.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { valid: boolean; reason: string });
    assert.equal(answers.length, lines.length);
    for (const [i, a] of answers.entries()) {
      assert.equal(a.valid, true, `key ${v.private_jwks.keys[i]?.kid}: ${a.reason}`);
    }
  },
);
