import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import { compactVerify, createLocalJWKSet, decodeProtectedHeader, type JWK } from 'jose';
import {
  createSigner,
  type EnvelopeAlgorithm,
  EnvelopeError,
  type EnvelopeInput,
  generateEnvelopeKey,
} from '../src/envelope/index.js';

const ISSUER = 'https://mandate.test';
const NOW = 1_798_761_600_000;

const base = (): EnvelopeInput => ({
  actor: { type: 'user', sub: 'alice', tenant: 'acme' },
  agent: { id: 'support-agent' },
  session: { id: 'sess-1', trace_id: '4bf92f3577b34da6a3ce929d0e0e4736' },
  authorization: { scopes: ['orders:read'], confidence: 'verified' },
  delegation: { mode: 'on_behalf_of' },
});

for (const alg of ['ES256', 'ES384', 'EdDSA', 'PS256', 'RS256'] as EnvelopeAlgorithm[]) {
  test(`generate and sign with ${alg}`, async () => {
    const keys = await generateEnvelopeKey({ alg });
    assert.equal(keys.publicJwks.keys.length, 1);
    const pub = keys.publicJwks.keys[0] as JWK;
    assert.equal(pub.kid, keys.kid);
    assert.equal(pub.alg, alg);
    assert.equal(pub.d, undefined, 'the public set holds no private member');
    assert.ok(keys.privateJwk.d);
    const signer = createSigner({ key: keys.privateJwk, clientId: 'mcp', issuer: ISSUER, now: () => NOW });
    assert.equal(signer.alg, alg);
    const { token, claims } = await signer.signWithClaims(base());
    const header = decodeProtectedHeader(token);
    assert.deepEqual(header, { alg, typ: 'eie+jwt', kid: keys.kid });
    const { payload } = await compactVerify(token, createLocalJWKSet(keys.publicJwks));
    const got = JSON.parse(new TextDecoder().decode(payload));
    assert.deepEqual(got, claims);
    assert.equal(got.iss, 'mcp');
    assert.equal(got.aud, ISSUER);
    assert.equal(got.agent.client_id, 'mcp');
    assert.equal(got.agent.type, 'mcp_agent');
    assert.equal(got.iat, NOW / 1000);
    assert.equal(got.exp, NOW / 1000 + 60);
    assert.match(got.jti, /^[A-Za-z0-9_-]{22}$/);
  });
}

test('jti is fresh for every envelope; defaults fill an empty authorization', async () => {
  const keys = await generateEnvelopeKey();
  const signer = createSigner({ key: keys.privateJwk, clientId: 'mcp', issuer: ISSUER });
  const { authorization: _, ...noAuth } = base();
  const a = await signer.signWithClaims(noAuth);
  const b = await signer.signWithClaims(noAuth);
  assert.notEqual(a.claims.jti, b.claims.jti);
  assert.deepEqual(a.claims.authorization, { scopes: [] });
});

const refusals: [string, (i: EnvelopeInput) => unknown, string][] = [
  ['no actor.sub', (i) => ({ ...i, actor: { ...i.actor, sub: '' } }), 'missing_member'],
  ['actor.sub "*"', (i) => ({ ...i, actor: { ...i.actor, sub: '*' } }), 'bad_value'],
  ['no tenant', (i) => ({ ...i, actor: { type: 'user', sub: 'alice' } }), 'missing_member'],
  ['unknown actor type', (i) => ({ ...i, actor: { ...i.actor, type: 'robot' } }), 'bad_value'],
  [
    'service actor outside service_identity',
    (i) => ({ ...i, actor: { ...i.actor, type: 'service' } }),
    'bad_value',
  ],
  ['no agent.id', (i) => ({ ...i, agent: {} }), 'missing_member'],
  ['no session.id', (i) => ({ ...i, session: { id: '' } }), 'missing_member'],
  ['no mode', (i) => ({ ...i, delegation: {} }), 'missing_member'],
  ['unknown mode', (i) => ({ ...i, delegation: { mode: 'obo' } }), 'bad_value'],
  ['bad confidence', (i) => ({ ...i, authorization: { scopes: [], confidence: 'sure' } }), 'bad_value'],
  ['scope with a space', (i) => ({ ...i, authorization: { scopes: ['a b'] } }), 'bad_value'],
  [
    'empty allowed audience',
    (i) => ({ ...i, delegation: { mode: 'on_behalf_of', allowed: [''] } }),
    'bad_value',
  ],
  ['control character in session.id', (i) => ({ ...i, session: { id: 'a\nb' } }), 'bad_value'],
  ['NUL in actor.sub', (i) => ({ ...i, actor: { ...i.actor, sub: 'a\u0000' } }), 'bad_value'],
  ['act without sub', (i) => ({ ...i, act: { client_id: 'x' } }), 'missing_member'],
  ['jti over 128 characters', (i) => ({ ...i, jti: 'j'.repeat(129) }), 'bad_value'],
  ['exp before iat', (i) => ({ ...i, iat: NOW / 1000, exp: NOW / 1000 - 1 }), 'bad_value'],
  [
    'lifetime over the client maximum',
    (i) => ({ ...i, iat: NOW / 1000, exp: NOW / 1000 + 301 }),
    'lifetime_too_long',
  ],
  ['lifetime over 3600', (i) => ({ ...i, iat: NOW / 1000, exp: NOW / 1000 + 3601 }), 'lifetime_too_long'],
  [
    'another iss',
    (i) => ({ ...i, iss: 'someone-else', agent: { id: 'a', client_id: 'someone-else' } }),
    'issuer_mismatch',
  ],
  ['agent.client_id not iss', (i) => ({ ...i, agent: { id: 'a', client_id: 'other' } }), 'client_mismatch'],
  ['aud without the issuer', (i) => ({ ...i, aud: 'https://elsewhere' }), 'audience_mismatch'],
  ['empty aud value', (i) => ({ ...i, aud: [ISSUER, ''] }), 'bad_value'],
  ['already expired', (i) => ({ ...i, iat: NOW / 1000 - 200, exp: NOW / 1000 - 100 }), 'expired'],
  ['iat in the future', (i) => ({ ...i, iat: NOW / 1000 + 120, exp: NOW / 1000 + 180 }), 'not_yet_valid'],
  ['a number for actor.sub', (i) => ({ ...i, actor: { ...i.actor, sub: 42 } }), 'bad_format'],
  ['a string for exp', (i) => ({ ...i, exp: 'tomorrow' }), 'bad_format'],
  ['scopes not an array', (i) => ({ ...i, authorization: { scopes: 'orders:read' } }), 'bad_format'],
  [
    'larger than 8 KiB',
    (i) => ({ ...i, authorization: { scopes: Array.from({ length: 700 }, (_, n) => `scope:${n}`) } }),
    'too_large',
  ],
];

test('the signer refuses what Mandate would refuse, with its reason', async () => {
  const keys = await generateEnvelopeKey();
  const signer = createSigner({ key: keys.privateJwk, clientId: 'mcp', issuer: ISSUER, now: () => NOW });
  for (const [name, change, reason] of refusals) {
    await assert.rejects(
      signer.sign(change(base()) as EnvelopeInput),
      (e: unknown) =>
        e instanceof EnvelopeError &&
        e.reason === reason &&
        e.wireReason === (reason === 'too_large' ? 'subject_token_too_large' : `envelope_${reason}`),
      name,
    );
  }
  // Service actors are fine in service_identity mode.
  await signer.sign({
    ...base(),
    actor: { type: 'service', sub: 'nightly-sync', tenant: 'acme' },
    delegation: { mode: 'service_identity' },
  });
});

test('createSigner refuses keys and algorithms Mandate never accepts', async () => {
  const es = await generateEnvelopeKey();
  const ed = await generateEnvelopeKey({ alg: 'EdDSA' });
  assert.throws(
    () => createSigner({ key: es.privateJwk, alg: 'EdDSA', clientId: 'c', issuer: ISSUER }),
    /does not fit/,
  );
  assert.throws(
    () => createSigner({ key: ed.privateJwk, alg: 'ES256', clientId: 'c', issuer: ISSUER }),
    /does not fit/,
  );
  assert.throws(
    () =>
      createSigner({ key: es.privateJwk, alg: 'HS256' as EnvelopeAlgorithm, clientId: 'c', issuer: ISSUER }),
    /not allowed/,
  );
  assert.throws(
    () => createSigner({ key: es.publicJwks.keys[0] as JWK, clientId: 'c', issuer: ISSUER }),
    /no private member/,
  );
  const { kid: _, ...noKid } = es.privateJwk;
  assert.throws(() => createSigner({ key: noKid, clientId: 'c', issuer: ISSUER }), /kid is required/);
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey;
  assert.throws(() => createSigner({ key: small, kid: 'k', clientId: 'c', issuer: ISSUER }), /2048/);
  assert.throws(
    () => createSigner({ key: es.privateJwk, clientId: 'c', issuer: ISSUER, lifetime: 600 }),
    /lifetime/,
  );
  // A KeyObject works too.
  const ko = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  assert.equal(createSigner({ key: ko, kid: 'k', clientId: 'c', issuer: ISSUER }).alg, 'ES384');
});
