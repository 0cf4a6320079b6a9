/**
 * The Execution Identity Envelope (EIE, docs/eie.md): its types, key generation, and a signer that
 * refuses to sign what Mandate would refuse, so mistakes show up in the MCP server's own tests
 * rather than as `invalid_request` at the token endpoint.
 *
 * The claim types use the wire's member names (`client_id`, `trace_id`), so an envelope reads the
 * same in code, in a decoded token and in Mandate's documentation.
 *
 * @module
 */
import { KeyObject } from 'node:crypto';
import {
  CompactSign,
  type CryptoKey,
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
} from 'jose';
import { randomId } from '../internal/random.js';

/** The JWS header `typ` of every envelope. */
export const ENVELOPE_TYPE = 'eie+jwt';
/** The `subject_token_type` an MCP server sends with an envelope. */
export const ENVELOPE_TOKEN_TYPE = 'urn:mandate:params:oauth:token-type:eie';
/** The agent.type the signer fills in when none is given. */
export const AGENT_TYPE_MCP = 'mcp_agent';
/** Mandate refuses envelopes larger than this (bytes of the compact JWS). */
export const MAX_ENVELOPE_BYTES = 8192;
/** The longest `exp - iat` Mandate allows any client (seconds). */
export const MAX_LIFETIME_CEILING = 3600;
/** The longest `exp - iat` Mandate allows a client that has not been configured otherwise. */
export const DEFAULT_MAX_LIFETIME = 300;
/** The lifetime the signer gives an envelope without an `exp` (seconds). */
export const DEFAULT_LIFETIME = 60;
/** The clock skew Mandate tolerates on `exp`, `iat` and `nbf` (seconds). */
export const CLOCK_SKEW = 60;
/** The longest `jti` Mandate accepts (characters). */
export const MAX_JTI_LENGTH = 128;

/** JWS algorithms Mandate accepts on envelopes. */
export type EnvelopeAlgorithm = 'ES256' | 'ES384' | 'EdDSA' | 'PS256' | 'RS256';
const ALGORITHMS: readonly EnvelopeAlgorithm[] = ['ES256', 'ES384', 'EdDSA', 'PS256', 'RS256'];

/** Delegation modes (docs/eie.md#delegation-modes). */
export type DelegationMode = 'on_behalf_of' | 'service_identity' | 'restricted_user';
/** Actor types: a person, or a service acting as itself. */
export type ActorType = 'user' | 'service';

/** The user or service on whose behalf work is done. */
export interface Actor {
  /** `user` or `service`. A service actor must use mode `service_identity`. */
  type: ActorType;
  /** The actor's id in its tenant; never `"*"` (that means "every user" only inside a grant). */
  sub: string;
  /** The actor's tenant. */
  tenant: string;
}

/** The AI agent runtime that executes the tool. */
export interface Agent {
  /** Describes the runtime; the signer sets `mcp_agent` when absent. Not interpreted by Mandate. */
  type?: string;
  /** The agent's id: it becomes the issued token's `act.sub` and `agent_id`. */
  id: string;
  /** The MCP server's client_id; the signer fills it in and refuses any other value. */
  client_id?: string;
}

/** Ties the envelope to the MCP session and trace. */
export interface Session {
  /** The MCP session id. */
  id: string;
  /** A W3C trace id or any opaque id; copied into the token and the audit record. */
  trace_id?: string;
}

/** The scopes the MCP server validated for the user. Mandate only ever narrows them. */
export interface Authorization {
  scopes: string[];
  /** `verified` when the scopes come from a validated token. */
  confidence?: 'verified' | 'estimated';
}

/** How the downstream call represents the actor. */
export interface Delegation {
  mode: DelegationMode;
  /** Audience ids the envelope may be exchanged for; empty or absent means any the grant covers. */
  allowed?: string[];
}

/** One link of an RFC 8693 §4.1 actor chain, newest outermost. */
export interface Act {
  sub: string;
  client_id?: string;
  act?: Act;
}

/** The claims of an envelope as they travel. */
export interface EnvelopeClaims {
  iss: string;
  aud: string | string[];
  iat: number;
  exp: number;
  nbf?: number;
  jti: string;
  actor: Actor;
  agent: Agent & { client_id: string };
  session: Session;
  authorization: Authorization;
  delegation: Delegation;
  act?: Act;
}

/**
 * What a caller gives {@link EnvelopeSigner.sign}. `iss`, `aud`, `agent.client_id`, `jti`, `iat`
 * and `exp` are filled in from the signer's binding when absent, and refused when they disagree
 * with it.
 */
export interface EnvelopeInput {
  iss?: string;
  aud?: string | string[];
  /** Seconds since the epoch; default now. */
  iat?: number;
  /** Seconds since the epoch; default `iat` + the signer's lifetime. */
  exp?: number;
  nbf?: number;
  /** Default: 128 random bits, base64url. */
  jti?: string;
  actor: Actor;
  agent: Agent;
  session: Session;
  /** Default: no scopes. */
  authorization?: Authorization;
  delegation: Delegation;
  act?: Act;
}

/** Envelope-level refusal codes, the same as the Go `envelope` package's. */
export type EnvelopeReason =
  | 'bad_format'
  | 'too_large'
  | 'wrong_type'
  | 'alg_not_allowed'
  | 'unknown_kid'
  | 'bad_signature'
  | 'expired'
  | 'not_yet_valid'
  | 'lifetime_too_long'
  | 'issuer_mismatch'
  | 'audience_mismatch'
  | 'client_mismatch'
  | 'missing_member'
  | 'bad_value'
  | 'keys_unavailable';

/**
 * The signer refused an envelope, for the reason Mandate would give. `wireReason` is the `reason`
 * the token endpoint would answer (`envelope_` + reason, but `subject_token_too_large`).
 */
export class EnvelopeError extends Error {
  /** The stable code, e.g. `missing_member`. */
  readonly reason: EnvelopeReason;
  constructor(reason: EnvelopeReason, message: string) {
    super(`envelope ${reason}: ${message}`);
    this.name = 'EnvelopeError';
    this.reason = reason;
  }
  /**
   * The token endpoint's `reason` for the same refusal. An oversized envelope is refused as a
   * parameter before it is parsed as an envelope: `subject_token_too_large`.
   */
  get wireReason(): string {
    return this.reason === 'too_large' ? 'subject_token_too_large' : `envelope_${this.reason}`;
  }
}

function refuse(reason: EnvelopeReason, message: string): never {
  throw new EnvelopeError(reason, message);
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function hasControl(s: string): boolean {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
  return /[\u0000-\u001f\u007f]/.test(s);
}

/** RFC 6749 §3.3 scope-token: a space, quote or backslash inside one would forge another. */
export function isScopeToken(s: string): boolean {
  return /^[\x21\x23-\x5b\x5d-\x7e]+$/.test(s);
}

function optString(o: Record<string, unknown>, key: string, where: string): string {
  const v = o[key];
  if (v === undefined || v === null) return '';
  if (!isString(v)) refuse('bad_format', `${where}${key} must be a string`);
  return v;
}

function objectMember(o: Record<string, unknown>, key: string): Record<string, unknown> {
  const v = o[key];
  if (v === undefined || v === null) return {};
  if (!isObject(v)) refuse('bad_format', `${key} must be an object`);
  return v;
}

function numericDate(o: Record<string, unknown>, key: string): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 2 ** 37) {
    refuse('bad_format', `${key} must be a NumericDate`);
  }
  return v;
}

function stringList(v: unknown, where: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every(isString)) refuse('bad_format', `${where} must be an array of strings`);
  return v;
}

/**
 * Checks the claims of an envelope against the envelope profile's content rules (docs/eie.md) — the checks that depend on
 * the claims alone, in the order the Go verifier applies them (`checkMembers`), plus the
 * profile's rule that `actor.sub` is never `"*"`. Throws an {@link EnvelopeError}.
 */
export function checkEnvelopeMembers(claims: unknown): void {
  if (!isObject(claims)) refuse('bad_format', 'the claims must be a JSON object');
  const jti = optString(claims, 'jti', '');
  const actor = objectMember(claims, 'actor');
  const agent = objectMember(claims, 'agent');
  const session = objectMember(claims, 'session');
  const authorization = objectMember(claims, 'authorization');
  const delegation = objectMember(claims, 'delegation');
  const actorType = optString(actor, 'type', 'actor.');
  const actorSub = optString(actor, 'sub', 'actor.');
  const tenant = optString(actor, 'tenant', 'actor.');
  const agentType = optString(agent, 'type', 'agent.');
  const agentId = optString(agent, 'id', 'agent.');
  const sessionId = optString(session, 'id', 'session.');
  const traceId = optString(session, 'trace_id', 'session.');
  const mode = optString(delegation, 'mode', 'delegation.');
  const confidence = optString(authorization, 'confidence', 'authorization.');
  const scopes = stringList(authorization.scopes, 'authorization.scopes');
  const allowed = stringList(delegation.allowed, 'delegation.allowed');
  const chain: { sub: string; clientId: string }[] = [];
  let link: unknown = claims.act;
  while (link !== undefined && link !== null) {
    if (!isObject(link)) refuse('bad_format', 'act must be an object');
    if (chain.length >= 32) refuse('bad_format', 'act nests too deep');
    chain.push({ sub: optString(link, 'sub', 'act.'), clientId: optString(link, 'client_id', 'act.') });
    link = link.act;
  }

  if (jti === '') refuse('missing_member', 'the envelope has no jti');
  if ([...jti].length > MAX_JTI_LENGTH) refuse('bad_value', 'the envelope jti is longer than 128 characters');
  if (actorType === '') refuse('missing_member', 'the envelope has no actor.type');
  if (actorSub === '') refuse('missing_member', 'the envelope has no actor.sub');
  if (tenant === '') refuse('missing_member', 'the envelope has no actor.tenant');
  if (agentId === '') refuse('missing_member', 'the envelope has no agent.id');
  if (sessionId === '') refuse('missing_member', 'the envelope has no session.id');
  if (mode === '') refuse('missing_member', 'the envelope has no delegation.mode');
  if (actorType !== 'user' && actorType !== 'service') {
    refuse('bad_value', 'the envelope actor.type must be "user" or "service"');
  }
  if (!['on_behalf_of', 'service_identity', 'restricted_user'].includes(mode)) {
    refuse(
      'bad_value',
      'the envelope delegation.mode must be on_behalf_of, service_identity or restricted_user',
    );
  }
  if (actorType === 'service' && mode !== 'service_identity') {
    refuse('bad_value', 'an envelope for a service actor must use delegation mode service_identity');
  }
  if (confidence !== '' && confidence !== 'verified' && confidence !== 'estimated') {
    refuse('bad_value', 'the envelope authorization.confidence must be "verified" or "estimated"');
  }
  if (!scopes.every(isScopeToken)) {
    refuse('bad_value', 'the envelope authorization.scopes holds a value that is not a valid scope');
  }
  if (allowed.some((a) => a === ''))
    refuse('bad_value', 'the envelope delegation.allowed holds an empty audience');
  for (const a of chain) {
    if (a.sub === '') refuse('missing_member', 'an act entry of the envelope has no sub');
    if (hasControl(a.sub) || hasControl(a.clientId)) {
      refuse('bad_value', 'an act entry of the envelope holds a control character');
    }
  }
  const fields: [string, string][] = [
    ['jti', jti],
    ['actor.sub', actorSub],
    ['actor.tenant', tenant],
    ['agent.type', agentType],
    ['agent.id', agentId],
    ['session.id', sessionId],
    ['session.trace_id', traceId],
  ];
  for (const [name, v] of fields) {
    if (hasControl(v)) refuse('bad_value', `the envelope ${name} holds a control character`);
  }
  if (allowed.some(hasControl))
    refuse('bad_value', 'the envelope delegation.allowed holds a control character');
  if (actorSub === '*')
    refuse('bad_value', 'the envelope actor.sub must not be "*" ("*" means every user only in a grant)');
}

/** A private key the signer accepts: a JWK with its private members, a CryptoKey or a KeyObject. */
export type SigningKey = JWK | CryptoKey | KeyObject;

/** Options of {@link createSigner}. */
export interface SignerOptions {
  /** The private key. Its public half, with the same `kid`, is registered for the client at Mandate. */
  key: SigningKey;
  /** The key id in the header. Default: the JWK's own `kid`. Required for CryptoKey and KeyObject. */
  kid?: string;
  /**
   * The JWS algorithm. Default: ES256 for P-256, ES384 for P-384, EdDSA for Ed25519, PS256 for RSA
   * (pass RS256 for PKCS #1 v1.5), or the JWK's own `alg`.
   */
  alg?: EnvelopeAlgorithm;
  /** The MCP server's client_id at Mandate: every envelope's `iss` and `agent.client_id`. */
  clientId: string;
  /** Mandate's issuer URL, exactly as its metadata says: every envelope's `aud`. */
  issuer: string;
  /** `exp - iat` when the caller gives no `exp`, in seconds. Default 60. */
  lifetime?: number;
  /**
   * The client's maximum envelope lifetime at Mandate, in seconds: longer envelopes are refused
   * here as Mandate would refuse them. Default 300 (Mandate's default), at most 3600.
   */
  maxLifetime?: number;
  /** The clock, in milliseconds since the epoch. Default `Date.now`. */
  now?: () => number;
}

/** Signs envelopes for one client and one Mandate. Stateless apart from its key: safe to share. */
export interface EnvelopeSigner {
  /** The header `alg`. */
  readonly alg: EnvelopeAlgorithm;
  /** The header `kid`. */
  readonly kid: string;
  /** The client_id the envelopes are for. */
  readonly clientId: string;
  /** Mandate's issuer (the envelopes' `aud`). */
  readonly issuer: string;
  /**
   * Fills defaults, checks and signs. Rejects with an {@link EnvelopeError} carrying the reason
   * Mandate would give for anything Mandate would refuse on the envelope's content.
   */
  sign(input: EnvelopeInput): Promise<string>;
  /** Like {@link EnvelopeSigner.sign}, and also returns the claims that were signed. */
  signWithClaims(input: EnvelopeInput): Promise<{ token: string; claims: EnvelopeClaims }>;
}

type KeyShape =
  | { kind: 'ec'; curve: string }
  | { kind: 'okp'; curve: string }
  | { kind: 'rsa'; bits: number };

function keyShape(key: SigningKey): KeyShape {
  if (key instanceof KeyObject) {
    if (key.type !== 'private') throw new TypeError('envelope: the signing key must be a private key');
    const d = key.asymmetricKeyDetails ?? {};
    switch (key.asymmetricKeyType) {
      case 'ec':
        return {
          kind: 'ec',
          curve:
            d.namedCurve === 'prime256v1'
              ? 'P-256'
              : d.namedCurve === 'secp384r1'
                ? 'P-384'
                : String(d.namedCurve),
        };
      case 'ed25519':
        return { kind: 'okp', curve: 'Ed25519' };
      case 'rsa':
      case 'rsa-pss':
        return { kind: 'rsa', bits: d.modulusLength ?? 0 };
    }
    throw new TypeError(`envelope: unsupported key type ${String(key.asymmetricKeyType)}`);
  }
  if (isCryptoKey(key)) {
    if (key.type !== 'private') throw new TypeError('envelope: the signing key must be a private key');
    const a = key.algorithm as { name: string; namedCurve?: string; modulusLength?: number };
    if (a.name === 'ECDSA') return { kind: 'ec', curve: String(a.namedCurve) };
    if (a.name === 'Ed25519') return { kind: 'okp', curve: 'Ed25519' };
    if (a.name === 'RSA-PSS' || a.name === 'RSASSA-PKCS1-v1_5')
      return { kind: 'rsa', bits: a.modulusLength ?? 0 };
    throw new TypeError(`envelope: unsupported key algorithm ${a.name}`);
  }
  const jwk = key as JWK;
  if (jwk.d === undefined) throw new TypeError('envelope: the signing JWK has no private member "d"');
  if (jwk.kty === 'EC') return { kind: 'ec', curve: String(jwk.crv) };
  if (jwk.kty === 'OKP') return { kind: 'okp', curve: String(jwk.crv) };
  if (jwk.kty === 'RSA') return { kind: 'rsa', bits: jwk.n ? Buffer.from(jwk.n, 'base64url').length * 8 : 0 };
  throw new TypeError(`envelope: unsupported JWK kty ${String(jwk.kty)}`);
}

function isCryptoKey(k: unknown): k is CryptoKey {
  return typeof globalThis.CryptoKey === 'function' && k instanceof globalThis.CryptoKey;
}

function defaultAlg(shape: KeyShape): EnvelopeAlgorithm {
  if (shape.kind === 'ec' && shape.curve === 'P-256') return 'ES256';
  if (shape.kind === 'ec' && shape.curve === 'P-384') return 'ES384';
  if (shape.kind === 'okp' && shape.curve === 'Ed25519') return 'EdDSA';
  if (shape.kind === 'rsa') return 'PS256';
  throw new TypeError('envelope: EC keys must be on P-256 or P-384, OKP keys Ed25519');
}

function algFits(alg: EnvelopeAlgorithm, shape: KeyShape): boolean {
  switch (alg) {
    case 'ES256':
      return shape.kind === 'ec' && shape.curve === 'P-256';
    case 'ES384':
      return shape.kind === 'ec' && shape.curve === 'P-384';
    case 'EdDSA':
      return shape.kind === 'okp' && shape.curve === 'Ed25519';
    default:
      return shape.kind === 'rsa';
  }
}

/**
 * Returns a signer bound to one client and one Mandate issuer. It throws a TypeError at once for
 * a key or algorithm Mandate would never accept.
 */
export function createSigner(options: SignerOptions): EnvelopeSigner {
  const { key, clientId, issuer } = options;
  if (!clientId) throw new TypeError('envelope: clientId is required');
  if (!issuer) throw new TypeError('envelope: issuer is required');
  const shape = keyShape(key);
  if (shape.kind === 'rsa' && shape.bits < 2048)
    throw new TypeError('envelope: RSA keys must have at least 2048 bits');
  const jwkAlg = !(key instanceof KeyObject) && !isCryptoKey(key) ? (key as JWK).alg : undefined;
  const alg = options.alg ?? (jwkAlg as EnvelopeAlgorithm | undefined) ?? defaultAlg(shape);
  if (!ALGORITHMS.includes(alg)) {
    throw new TypeError(`envelope: alg ${alg} is not allowed (use ES256, ES384, EdDSA, PS256 or RS256)`);
  }
  if (!algFits(alg, shape)) throw new TypeError(`envelope: alg ${alg} does not fit the key`);
  const kid =
    options.kid ?? (!(key instanceof KeyObject) && !isCryptoKey(key) ? (key as JWK).kid : undefined);
  if (!kid) throw new TypeError('envelope: a kid is required');
  const lifetime = options.lifetime ?? DEFAULT_LIFETIME;
  const maxLifetime = Math.min(options.maxLifetime ?? DEFAULT_MAX_LIFETIME, MAX_LIFETIME_CEILING);
  if (!(lifetime > 0) || lifetime > maxLifetime) {
    throw new TypeError(`envelope: lifetime must be between 1 and ${maxLifetime} seconds`);
  }
  const now = options.now ?? Date.now;
  let imported: Promise<CryptoKey | KeyObject | Uint8Array> | undefined;
  const signingKey = () => {
    imported ??=
      key instanceof KeyObject || isCryptoKey(key)
        ? Promise.resolve(key)
        : importJWK({ ...(key as JWK), alg }, alg);
    return imported;
  };

  async function signWithClaims(input: EnvelopeInput): Promise<{ token: string; claims: EnvelopeClaims }> {
    const claims = complete(input, {
      clientId,
      issuer,
      lifetime,
      maxLifetime,
      nowSeconds: Math.floor(now() / 1000),
    });
    const header = { alg, typ: ENVELOPE_TYPE, kid };
    const payload = new TextEncoder().encode(JSON.stringify(claims));
    const headerLen = Buffer.from(JSON.stringify(header)).toString('base64url').length;
    const sigLen = Math.ceil((signatureSize(alg, shape) * 4) / 3);
    if (headerLen + 1 + Math.ceil((payload.length * 4) / 3) + 1 + sigLen > MAX_ENVELOPE_BYTES) {
      refuse('too_large', 'the envelope would be larger than 8 KiB');
    }
    const token = await new CompactSign(payload).setProtectedHeader(header).sign(await signingKey());
    return { token, claims };
  }
  return {
    alg,
    kid,
    clientId,
    issuer,
    signWithClaims,
    sign: async (input) => (await signWithClaims(input)).token,
  };
}

function signatureSize(alg: EnvelopeAlgorithm, shape: KeyShape): number {
  if (alg === 'ES256') return 64;
  if (alg === 'ES384') return 96;
  if (alg === 'EdDSA') return 64;
  return shape.kind === 'rsa' ? Math.ceil(shape.bits / 8) : 512;
}

interface Binding {
  clientId: string;
  issuer: string;
  lifetime: number;
  maxLifetime: number;
  nowSeconds: number;
}

/** Fills the defaults of an envelope and applies every check Mandate applies to its content. */
function complete(input: EnvelopeInput, b: Binding): EnvelopeClaims {
  if (!isObject(input)) refuse('bad_format', 'the envelope input must be an object');
  const raw = input as unknown as Record<string, unknown>;
  const iss = raw.iss === undefined ? b.clientId : raw.iss;
  if (!isString(iss)) refuse('bad_format', 'iss must be a string');
  const audIn = raw.aud === undefined ? b.issuer : raw.aud;
  const aud = isString(audIn) ? [audIn] : audIn;
  if (!Array.isArray(aud) || !aud.every(isString))
    refuse('bad_format', 'aud must be a string or an array of strings');
  const agentIn = objectMember(raw, 'agent');
  const agent = {
    ...agentIn,
    type: agentIn.type === undefined || agentIn.type === '' ? AGENT_TYPE_MCP : agentIn.type,
    client_id: agentIn.client_id === undefined || agentIn.client_id === '' ? iss : agentIn.client_id,
  } as Agent & { client_id: string };
  const iatIn = numericDate(raw, 'iat');
  const iat = Math.floor(iatIn ?? b.nowSeconds);
  const expIn = numericDate(raw, 'exp');
  const exp = Math.floor(expIn ?? iat + b.lifetime);
  const nbfIn = numericDate(raw, 'nbf');
  const jti = raw.jti === undefined || raw.jti === '' ? randomId(16) : raw.jti;
  const authorization = (raw.authorization ?? { scopes: [] }) as Authorization;
  const claims: EnvelopeClaims = {
    iss,
    aud: aud.length === 1 ? (aud[0] as string) : aud,
    iat,
    exp,
    ...(nbfIn === undefined ? {} : { nbf: Math.floor(nbfIn) }),
    jti: jti as string,
    actor: raw.actor as Actor,
    agent,
    session: raw.session as Session,
    authorization: isObject(authorization)
      ? { ...authorization, scopes: authorization.scopes ?? [] }
      : authorization,
    delegation: raw.delegation as Delegation,
    ...(raw.act === undefined ? {} : { act: raw.act as Act }),
  };

  if (iss === '') refuse('missing_member', 'iss is required');
  if (aud.length === 0) refuse('missing_member', "aud is required (Mandate's issuer URL)");
  if (agent.client_id !== iss) refuse('client_mismatch', 'agent.client_id must equal iss');
  if (aud.some((a) => a === '')) refuse('bad_value', 'aud holds an empty value');
  if (exp <= iat) refuse('bad_value', 'exp must be after iat');
  if (exp - iat > MAX_LIFETIME_CEILING) refuse('lifetime_too_long', 'exp - iat must be at most 3600 seconds');
  checkEnvelopeMembers(claims);
  // The rest depend on the binding: which client signs, for which Mandate, at what time.
  if (iss !== b.clientId) refuse('issuer_mismatch', `iss must be the signer's client_id ${b.clientId}`);
  if (!aud.includes(b.issuer)) refuse('audience_mismatch', `aud must contain Mandate's issuer ${b.issuer}`);
  if (exp - iat > b.maxLifetime) {
    refuse('lifetime_too_long', `exp - iat must be at most the client's maximum of ${b.maxLifetime} seconds`);
  }
  if (exp + CLOCK_SKEW <= b.nowSeconds) refuse('expired', 'the envelope would already have expired');
  if (iat > b.nowSeconds + CLOCK_SKEW) refuse('not_yet_valid', 'iat is in the future');
  if (claims.nbf !== undefined && claims.nbf > b.nowSeconds + CLOCK_SKEW) {
    refuse('not_yet_valid', 'nbf is in the future');
  }
  return claims;
}

/** A generated envelope key pair. */
export interface EnvelopeKeyPair {
  /** The private JWK (with `kid`, `alg`, `use`): keep it secret, give it to {@link createSigner}. */
  privateJwk: JWK;
  /** The public JWK Set to register as the client's `jwks` at Mandate. */
  publicJwks: { keys: JWK[] };
  /** The key id: the RFC 7638 thumbprint of the public key. */
  kid: string;
}

/** Generates an envelope key pair. Default ES256 (P-256). */
export async function generateEnvelopeKey(
  options: { alg?: EnvelopeAlgorithm; kid?: string } = {},
): Promise<EnvelopeKeyPair> {
  const alg = options.alg ?? 'ES256';
  if (!ALGORITHMS.includes(alg)) throw new TypeError(`envelope: alg ${alg} is not allowed`);
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
  const pub = await exportJWK(publicKey);
  const kid = options.kid ?? (await calculateJwkThumbprint(pub, 'sha256'));
  const meta = { kid, alg, use: 'sig' };
  return {
    privateJwk: { ...(await exportJWK(privateKey)), ...meta },
    publicJwks: { keys: [{ ...pub, ...meta }] },
    kid,
  };
}
