/**
 * The resource-server side of Mandate, for APIs written in TypeScript: a framework-neutral
 * verifier of the RFC 9068 access tokens Mandate issues (offline through Mandate's JWKS, with
 * optional RFC 7662 introspection for routes that must see a revocation at once) that returns a
 * {@link Principal}, and Node/express middleware that answers RFC 6750 errors.
 *
 * @module
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  createRemoteJWKSet,
  customFetch,
  type JWSHeaderParameters,
  type JWTPayload,
  errors as joseErrors,
  jwtVerify,
} from 'jose';

/** JWS algorithms a verifier may allow. Mandate signs with ES256 or EdDSA. */
export type TokenAlgorithm = 'ES256' | 'ES384' | 'EdDSA' | 'RS256' | 'PS256';

/** One link of the act chain (RFC 8693 §4.1). */
export interface ActorRef {
  sub: string;
  clientId?: string;
}

/** Who a verified token says is calling. */
export interface Principal {
  /** `user` for a person (any delegation mode), `service` for a service acting as itself. */
  actorType: 'user' | 'service';
  /** The person the call is for (`actor_sub`, else `sub`). Undefined for a service actor. */
  user?: string;
  /** The service actor (`actor_sub`, or the client for a client_credentials token). Undefined for a user. */
  service?: string;
  /** The actor's tenant. */
  tenant?: string;
  /** The raw `sub`: the user, or the MCP server's client_id in service_identity mode. */
  subject: string;
  /** The delegation mode. Undefined for a client_credentials token. */
  mode?: 'on_behalf_of' | 'service_identity' | 'restricted_user';
  /** The agent Mandate vouched for: `act.sub`/`act.client_id` (outermost), else `agent_id` + `client_id`. */
  agent?: ActorRef;
  /**
   * The rest of the act chain, newest first. Asserted by the MCP server alone: Mandate did not
   * verify these.
   */
  priorActors: ActorRef[];
  /** The MCP server (client) the token was issued to. */
  clientId?: string;
  /** The granted scopes. */
  scopes: string[];
  traceId?: string;
  sessionId?: string;
  /** The delegation grant that allowed the token, when one did. */
  grantId?: string;
  /** The token's audience: this API's. */
  audience: string;
  jti?: string;
  /** Seconds since the epoch. */
  issuedAt?: number;
  /** Seconds since the epoch. */
  expiresAt: number;
}

/** Whether principal holds scope. */
export const hasScope = (principal: Principal, scope: string): boolean => principal.scopes.includes(scope);

/** RFC 6750 error codes, plus 503's. */
export type VerificationErrorCode =
  | 'invalid_request'
  | 'invalid_token'
  | 'insufficient_scope'
  | 'temporarily_unavailable';

/**
 * A refused request, with the RFC 6750 answer it deserves. `description` names the failed check,
 * never what the token held.
 */
export class VerificationError extends Error {
  /** `invalid_request` (400), `invalid_token` (401), `insufficient_scope` (403), `temporarily_unavailable` (503); empty for a request without credentials (401, bare challenge). */
  readonly code: VerificationErrorCode | '';
  readonly status: 400 | 401 | 403 | 503;
  readonly description: string;
  /** For insufficient_scope: the scopes the resource needs. */
  readonly scope: string | undefined;
  constructor(
    status: 400 | 401 | 403 | 503,
    code: VerificationErrorCode | '',
    description: string,
    scope?: string,
  ) {
    super(code ? `${code}: ${description}` : description);
    this.name = 'VerificationError';
    this.status = status;
    this.code = code;
    this.description = description;
    this.scope = scope;
  }
}

/** Introspection settings: this API authenticates to Mandate as a client (client_secret_basic). */
export interface IntrospectionOptions {
  /** Default `${issuer}/oauth2/introspect`. */
  endpoint?: string;
  clientId: string;
  clientSecret: string;
}

/** Options of {@link createVerifier}. */
export interface VerifierOptions {
  /** Mandate's issuer URL, compared exactly with `iss` (no trailing slash). */
  issuer: string;
  /** This API's audience id as registered at Mandate; tokens for any other audience are refused. */
  audience: string;
  /** Default `${issuer}/.well-known/jwks.json`. */
  jwksUri?: string;
  /** Allowed header algorithms; default ES256 and EdDSA. `none` and HS* are never allowed. */
  algorithms?: readonly TokenAlgorithm[];
  /** Clock leeway on exp, iat and nbf in seconds; default 30. */
  leeway?: number;
  /** Scopes every request must hold (more can be required per route). */
  requiredScopes?: readonly string[];
  /** The least time between two JWKS fetches caused by unknown kids, in ms; default 30,000. */
  jwksCooldown?: number;
  /** Refetch the JWKS once it is this old, in ms (so removed keys stop verifying); default 600,000. */
  jwksMaxAge?: number;
  /** JWKS and introspection request timeout in ms; default 5,000. */
  timeout?: number;
  /** Enables {@link Verifier.introspect} and `online` checks. */
  introspection?: IntrospectionOptions;
  /** Sent as `realm` in WWW-Authenticate. */
  realm?: string;
  /** The fetch for the JWKS and introspection; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** The clock for token times, in ms since the epoch; default `Date.now`. */
  now?: () => number;
}

/** Options of one verification. */
export interface CheckOptions {
  /** Scopes this request needs, beyond the verifier's `requiredScopes`. */
  scopes?: readonly string[];
  /** Also ask Mandate through introspection whether the token is still active. */
  online?: boolean;
}

/** Verifies Mandate access tokens for one audience. */
export interface Verifier {
  /** Verifies a token offline (and online with `online`); rejects with a {@link VerificationError}. */
  verify(token: string, options?: CheckOptions): Promise<Principal>;
  /** Reads the bearer token from an Authorization header value and verifies it. */
  authenticate(authorization: string | string[] | undefined, options?: CheckOptions): Promise<Principal>;
  /** The WWW-Authenticate challenge for an error. */
  challenge(error: VerificationError): string;
}

const MAX_TOKEN_BYTES = 8192;
const MAX_ACT_DEPTH = 16;
const MAX_INTROSPECTION_BYTES = 64 * 1024;

/** Returns a verifier. Nothing is fetched until the first token arrives. */
export function createVerifier(options: VerifierOptions): Verifier {
  const { issuer, audience } = options;
  if (!issuer || !audience) throw new TypeError('downstream: issuer and audience are required');
  if (issuer.endsWith('/')) throw new TypeError('downstream: issuer must not end with a slash');
  const algorithms = [...(options.algorithms ?? ['ES256', 'EdDSA'])];
  for (const a of algorithms) {
    if (!['ES256', 'ES384', 'EdDSA', 'RS256', 'PS256'].includes(a))
      throw new TypeError(`downstream: algorithm ${a} is not allowed`);
  }
  const leeway = options.leeway ?? 30;
  const now = options.now ?? Date.now;
  const doFetch = options.fetch ?? ((...args: Parameters<typeof fetch>) => globalThis.fetch(...args));
  const timeout = options.timeout ?? 5000;
  const jwks = createRemoteJWKSet(new URL(options.jwksUri ?? `${issuer}/.well-known/jwks.json`), {
    cooldownDuration: options.jwksCooldown ?? 30_000,
    cacheMaxAge: options.jwksMaxAge ?? 600_000,
    timeoutDuration: timeout,
    [customFetch]: (url, init) => doFetch(url, init),
  });
  const introspection = options.introspection && {
    endpoint: options.introspection.endpoint ?? `${issuer}/oauth2/introspect`,
    clientId: options.introspection.clientId,
    clientSecret: options.introspection.clientSecret,
  };
  if (introspection && (!introspection.clientId || !introspection.clientSecret)) {
    throw new TypeError('downstream: introspection needs clientId and clientSecret');
  }

  const invalid = (d: string) => new VerificationError(401, 'invalid_token', d);
  const unavailable = () =>
    new VerificationError(503, 'temporarily_unavailable', 'the token cannot be verified right now');

  async function getKey(header: JWSHeaderParameters, token: Parameters<typeof jwks>[1]) {
    // The key comes from Mandate's JWKS only, never from (or through) the token.
    for (const member of ['jku', 'x5u', 'jwk', 'x5c'] as const) {
      if (header[member] !== undefined) throw invalid('the token header must not carry or point at a key');
    }
    if (!header.kid) throw invalid('the token header has no kid');
    try {
      return await jwks(header, token);
    } catch (e) {
      if (e instanceof joseErrors.JWKSNoMatchingKey || e instanceof joseErrors.JWKSMultipleMatchingKeys) {
        throw invalid("no key with the token's kid in Mandate's JWKS");
      }
      throw unavailable();
    }
  }

  async function offline(token: string): Promise<JWTPayload> {
    if (token.length > MAX_TOKEN_BYTES) throw invalid('token too large');
    try {
      const { payload } = await jwtVerify(token, getKey, {
        issuer,
        audience,
        algorithms,
        typ: 'at+jwt',
        clockTolerance: leeway,
        currentDate: new Date(now()),
        requiredClaims: ['exp', 'iat', 'sub'],
      });
      if (typeof payload.iat === 'number' && payload.iat > now() / 1000 + leeway)
        throw invalid('token issued in the future');
      return payload;
    } catch (e) {
      if (e instanceof VerificationError) throw e;
      throw invalid(describe(e));
    }
  }

  async function active(token: string): Promise<void> {
    if (!introspection) throw new TypeError('downstream: introspection is not configured');
    const enc = (s: string) => encodeURIComponent(s).replace(/%20/g, '+');
    let res: Response;
    let text: string;
    try {
      res = await doFetch(introspection.endpoint, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
          authorization: `Basic ${btoa(`${enc(introspection.clientId)}:${enc(introspection.clientSecret)}`)}`,
        },
        body: new URLSearchParams({ token, token_type_hint: 'access_token' }).toString(),
        redirect: 'error',
        signal: AbortSignal.timeout(timeout),
      });
      text = await res.text();
    } catch {
      throw unavailable();
    }
    // A 401 here means this API's own credentials are wrong: a server fault, not the caller's.
    if (res.status !== 200 || text.length > MAX_INTROSPECTION_BYTES) throw unavailable();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw unavailable();
    }
    const answer = body as { active?: unknown; aud?: unknown };
    if (typeof answer?.active !== 'boolean') throw unavailable();
    if (!answer.active) throw invalid('token is not active');
  }

  async function verify(token: string, opts: CheckOptions = {}): Promise<Principal> {
    const payload = await offline(token);
    const p = principalFrom(payload, audience);
    if (opts.online) await active(token);
    const needed = [...(options.requiredScopes ?? []), ...(opts.scopes ?? [])];
    if (needed.some((s) => !p.scopes.includes(s))) {
      throw new VerificationError(
        403,
        'insufficient_scope',
        'the token lacks a scope this resource requires',
        needed.join(' '),
      );
    }
    return p;
  }

  return {
    verify,
    async authenticate(authorization, opts) {
      return verify(bearerToken(authorization), opts);
    },
    challenge: (e) => challenge(options.realm, e),
  };
}

function describe(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return 'token expired';
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    switch (e.claim) {
      case 'iss':
        return 'wrong issuer';
      case 'aud':
        return 'token is for another audience';
      case 'typ':
        return 'wrong token type (typ must be at+jwt)';
      case 'nbf':
        return 'token not yet valid';
      default:
        return `claim ${e.claim} missing or invalid`;
    }
  }
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return 'algorithm not allowed';
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'bad signature';
  if (e instanceof joseErrors.JOSENotSupported) return 'unsupported token header';
  return 'malformed token';
}

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/**
 * Turns verified claims into a Principal. A token from a token exchange (it has a delegation mode,
 * an act chain or an actor_sub) must say whether its actor is a user or a service: without
 * `actor_type` it is refused rather than guessed, so a service is never presented as a user.
 */
export function principalFrom(c: JWTPayload, audience: string): Principal {
  const mode = str(c.delegation_mode);
  const actorSub = str(c.actor_sub);
  const fromExchange = mode !== undefined || c.act !== undefined || actorSub !== undefined;
  const actorType = c.actor_type;
  const invalid = (d: string) => new VerificationError(401, 'invalid_token', d);
  if (mode !== undefined && !['on_behalf_of', 'service_identity', 'restricted_user'].includes(mode)) {
    throw invalid('unknown delegation_mode');
  }
  if (typeof c.sub !== 'string' || c.sub === '') throw invalid('sub missing');
  if (c.scope !== undefined && typeof c.scope !== 'string') throw invalid('scope is not a string');
  const chain: ActorRef[] = [];
  let link: unknown = c.act;
  while (link !== undefined && link !== null) {
    if (typeof link !== 'object' || Array.isArray(link)) throw invalid('act is not an object');
    if (chain.length === MAX_ACT_DEPTH) throw invalid('act chain too deep');
    const l = link as { sub?: unknown; client_id?: unknown; act?: unknown };
    const sub = str(l.sub);
    if (!sub) throw invalid('act entry has no sub');
    const clientId = str(l.client_id);
    chain.push(clientId ? { sub, clientId } : { sub });
    link = l.act;
  }
  let type: 'user' | 'service';
  if (fromExchange) {
    if (actorType === undefined) throw invalid('token has no actor_type');
    if (actorType !== 'user' && actorType !== 'service') throw invalid('unknown actor_type');
    type = actorType;
  } else {
    // A client_credentials token: the client calls as itself.
    if (actorType !== undefined && actorType !== 'service') throw invalid('unknown actor_type');
    type = 'service';
  }
  const clientId = str(c.client_id);
  const agentId = str(c.agent_id);
  const [outer, ...prior] = chain;
  const agent: ActorRef | undefined =
    outer ?? (agentId ? { sub: agentId, ...(clientId ? { clientId } : {}) } : undefined);
  const p: Principal = {
    actorType: type,
    subject: c.sub,
    priorActors: prior,
    scopes: (typeof c.scope === 'string' ? c.scope : '').split(' ').filter((s) => s !== ''),
    audience,
    expiresAt: c.exp as number,
  };
  if (type === 'user') p.user = actorSub ?? c.sub;
  else p.service = fromExchange ? actorSub : c.sub;
  if (type === 'service' && fromExchange && !actorSub) throw invalid('service token has no actor_sub');
  const optional: [keyof Principal, unknown][] = [
    ['tenant', str(c.tenant)],
    ['mode', mode],
    ['agent', agent],
    ['clientId', clientId],
    ['traceId', str(c.trace_id)],
    ['sessionId', str(c.session_id)],
    ['grantId', str(c.grant_id)],
    ['jti', str(c.jti)],
    ['issuedAt', typeof c.iat === 'number' ? c.iat : undefined],
  ];
  for (const [k, v] of optional) if (v !== undefined) (p as unknown as Record<string, unknown>)[k] = v;
  return p;
}

/**
 * The bearer token of an Authorization header (RFC 6750 §2.1). Other ways of sending a token are
 * not supported: a token in a URL ends up in logs.
 */
export function bearerToken(authorization: string | string[] | undefined): string {
  const values = Array.isArray(authorization)
    ? authorization
    : authorization === undefined
      ? []
      : [authorization];
  if (values.length === 0) throw new VerificationError(401, '', 'a bearer token is required');
  if (values.length > 1)
    throw new VerificationError(400, 'invalid_request', 'more than one Authorization header');
  const v = values[0] as string;
  const sp = v.indexOf(' ');
  const scheme = sp < 0 ? v : v.slice(0, sp);
  // Another scheme (Basic, DPoP, ...) carries no bearer token: challenge for one.
  if (scheme.toLowerCase() !== 'bearer') throw new VerificationError(401, '', 'a bearer token is required');
  const token = sp < 0 ? '' : v.slice(sp + 1).replace(/^ +/, '');
  if (token === '' || /[\s]/.test(token))
    throw new VerificationError(400, 'invalid_request', 'malformed Authorization header');
  return token;
}

/** Keeps only the characters RFC 6750 §3 allows inside a quoted parameter. */
const quotable = (s: string) => s.replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, '');

/** The WWW-Authenticate value for an error (RFC 6750 §3). */
export function challenge(realm: string | undefined, e: VerificationError): string {
  const params: string[] = [];
  if (realm) params.push(`realm="${quotable(realm)}"`);
  if (e.code && e.code !== 'temporarily_unavailable') {
    params.push(`error="${e.code}"`);
    if (e.description) params.push(`error_description="${quotable(e.description)}"`);
    if (e.scope) params.push(`scope="${quotable(e.scope)}"`);
  }
  return params.length ? `Bearer ${params.join(', ')}` : 'Bearer';
}

/** Writes the RFC 6750 answer for e on a Node (or express) response, with the verifier's realm. */
export function writeError(
  res: ServerResponse,
  verifier: Pick<Verifier, 'challenge'>,
  e: VerificationError,
): void {
  res.statusCode = e.status;
  res.setHeader('cache-control', 'no-store');
  if (e.status === 503) {
    res.setHeader('retry-after', '5');
  } else {
    res.setHeader('www-authenticate', verifier.challenge(e));
  }
  if (e.code === '') {
    res.end();
    return;
  }
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ error: e.code, error_description: e.description }));
}

const principals = new WeakMap<object, Principal>();

/** The principal the middleware verified for req, if any. */
export function principalOf(req: IncomingMessage): Principal | undefined {
  return principals.get(req);
}

/** Options of {@link protect}. */
export interface ProtectOptions extends CheckOptions {
  /** Receives every refusal (never the token), e.g. for logs. */
  onError?: (error: VerificationError, req: IncomingMessage) => void;
}

/**
 * Node/express middleware: verifies the bearer token, checks the scopes, and makes the principal
 * available through {@link principalOf}; answers RFC 6750 errors otherwise. A token in the URL
 * (`access_token`) is refused with 400.
 */
export function protect(
  verifier: Verifier,
  options: ProtectOptions = {},
): (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void {
  return (req, res, next) => {
    const run = async () => {
      if (/[?&]access_token=/.test(req.url ?? '')) {
        throw new VerificationError(
          400,
          'invalid_request',
          'send the token in the Authorization header, not the URL',
        );
      }
      const raw: string[] = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        if (req.rawHeaders[i]?.toLowerCase() === 'authorization') raw.push(req.rawHeaders[i + 1] ?? '');
      }
      return verifier.authenticate(raw.length === 0 ? undefined : raw, options);
    };
    run().then(
      (p) => {
        principals.set(req, p);
        next();
      },
      (e: unknown) => {
        if (!(e instanceof VerificationError)) {
          next(e);
          return;
        }
        options.onError?.(e, req);
        writeError(res, verifier, e);
      },
    );
  };
}
