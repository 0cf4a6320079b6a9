/**
 * The identity boundary for MCP servers built on `@modelcontextprotocol/sdk` and express.
 *
 * The boundary validates the user's token where the SDK expects it — an `OAuthTokenVerifier` for
 * its `requireBearerAuth` middleware — derives the execution identity (user, tenant, agent,
 * scopes, session, trace) into `AuthInfo.extra`, and then removes the token from everything a tool
 * handler can reach: `extra.authInfo.token` is blank, and the Authorization header is gone from
 * `req.headers` *and* `req.rawHeaders` (the SDK rebuilds `extra.requestInfo.headers` from the raw
 * headers). Tools read the identity with {@link identity}; a session is bound to the user who
 * opened it.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { InvalidTokenError, ServerError } from '@modelcontextprotocol/sdk/server/auth/errors.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import type { OAuthTokenVerifier } from '@modelcontextprotocol/sdk/server/auth/provider.js';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import { type ClientCapabilities, UrlElicitationRequiredError } from '@modelcontextprotocol/sdk/types.js';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { createRemoteJWKSet, customFetch, type JWTPayload, errors as joseErrors, jwtVerify } from 'jose';
import type { Delegator, GrantRequestLink, GrantRequestOptions, Identity } from '../delegator/index.js';
import type { DelegationMode } from '../envelope/index.js';
import { type GrantRequiredError, grantRequired } from '../errors/index.js';
import { randomId } from '../internal/random.js';
import { newTraceId, parseTraceparent } from '../internal/trace.js';

export type { Identity } from '../delegator/index.js';

/** Where the identity travels inside `AuthInfo.extra`. */
export const IDENTITY_KEY = 'mandate.identity';

/** Which inbound claims become which identity members. A name may be a dotted path (`ext.tenant`). */
export interface ClaimMapping {
  /** The user id; default `sub`. */
  subject?: string;
  /** The tenant; default `tenant`. */
  tenant?: string;
  /** Used when the token has no tenant claim. Without either, the token is refused. */
  defaultTenant?: string;
  /** The scopes: a space-separated string (`scope`) or an array (`scp`); default `scope`. */
  scopes?: string;
  /** The session id; default `sid`. Absent: the Mcp-Session-Id header, else a fresh id. */
  session?: string;
  /** The agent id (e.g. `azp` or `client_id`); `agentId` is the fallback. */
  agentId?: string;
}

/** Options of {@link createBoundary}. */
export interface BoundaryOptions {
  /** The identity provider's issuer, compared exactly with `iss`. */
  issuer: string;
  /**
   * This MCP server's resource identifier: tokens for anything else are refused (RFC 8707; the MCP
   * authorization spec forbids token passthrough).
   */
  audience: string;
  /** The IdP's JWK Set; default `${issuer}/.well-known/jwks.json`. */
  jwksUri?: string;
  /** Allowed algorithms on user tokens; default ES256, ES384, EdDSA, RS256, PS256. */
  algorithms?: readonly ('ES256' | 'ES384' | 'EdDSA' | 'RS256' | 'PS256')[];
  /**
   * Clock leeway on iat and nbf, in seconds; default 30. (The SDK's bearer middleware refuses a
   * token once its exp has passed, without leeway.)
   */
  leeway?: number;
  /** This MCP server's client_id at Mandate (the envelopes' `agent.client_id`). */
  clientId: string;
  /** The agent id when the token names none (see `claims.agentId`). Required unless that claim is set. */
  agentId?: string;
  /** The delegation mode envelopes ask for; default `on_behalf_of`. */
  mode?: DelegationMode;
  /** Claim names. */
  claims?: ClaimMapping;
  /** Scopes every MCP request needs (checked by the SDK's bearer middleware: 403 insufficient_scope). */
  requiredScopes?: string[];
  /** Advertised in 401 challenges (RFC 9728) so MCP clients find where to get a token. */
  resourceMetadataUrl?: string;
  /**
   * Bind sessions to users: a request naming an Mcp-Session-Id must come from the user who opened
   * it (else 404, as for an unknown session). Default true; stateless servers may set false.
   */
  bindSessions?: boolean;
  /** The most sessions remembered; the oldest are forgotten first. Default 10,000. */
  maxSessions?: number;
  /** JWKS refetch cooldown for unknown kids, in ms; default 30,000. */
  jwksCooldown?: number;
  /** JWKS cache age, in ms; default 600,000. */
  jwksMaxAge?: number;
  /** The fetch for the JWKS; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** The clock, in ms since the epoch; default `Date.now`. */
  now?: () => number;
}

/** Remembers which user opened which MCP session. */
export class SessionOwners {
  readonly #owners = new Map<string, string>();
  readonly #max: number;
  constructor(max = 10_000) {
    this.#max = Math.max(1, max);
  }
  /** The owner key of an identity: issuer, tenant and user together. */
  static ownerOf(id: Identity): string {
    return JSON.stringify([id.issuer ?? '', id.actor.tenant, id.actor.sub]);
  }
  /** Records that id opened sessionId. */
  bind(sessionId: string, id: Identity): void {
    this.#owners.delete(sessionId);
    if (this.#owners.size >= this.#max) {
      const oldest = this.#owners.keys().next();
      if (!oldest.done) this.#owners.delete(oldest.value);
    }
    this.#owners.set(sessionId, SessionOwners.ownerOf(id));
  }
  /** Whether id may use sessionId. Unknown sessions belong to nobody. */
  allows(sessionId: string, id: Identity): boolean {
    return this.#owners.get(sessionId) === SessionOwners.ownerOf(id);
  }
  /** Forgets a closed session. */
  forget(sessionId: string | undefined): void {
    if (sessionId !== undefined) this.#owners.delete(sessionId);
  }
  get size(): number {
    return this.#owners.size;
  }
}

/** The MCP identity boundary. */
export interface Boundary {
  /** The verifier for the SDK's `requireBearerAuth`: `AuthInfo.extra` carries the identity, `token` is blank. */
  readonly verifier: OAuthTokenVerifier;
  /**
   * The express middleware chain for the MCP endpoint: refuse tokens in the URL and repeated
   * Authorization headers; `requireBearerAuth` with {@link Boundary.verifier}; then derive the
   * per-request identity (trace, session), check the session's owner, and remove the token.
   */
  readonly middleware: RequestHandler[];
  /** The session owners (forget a session when its transport closes). */
  readonly sessions: SessionOwners;
  /**
   * A `sessionIdGenerator` for the SDK's transport that binds the new session to the user of req:
   * `new StreamableHTTPServerTransport({ sessionIdGenerator: boundary.sessionIdGenerator(req) })`.
   */
  sessionIdGenerator(req: IncomingMessage): () => string;
}

/** A tool was called without an identity from the boundary. */
export class NoIdentityError extends Error {
  constructor(message = 'no caller identity: the request did not pass the Mandate boundary') {
    super(message);
    this.name = 'NoIdentityError';
  }
}

function lookup(claims: JWTPayload, path: string): unknown {
  let cur: unknown = claims;
  for (const part of path.split('.')) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur) || !Object.hasOwn(cur, part))
      return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

function stringClaim(claims: JWTPayload, path: string): string | undefined {
  const v = lookup(claims, path);
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v === '' ? undefined : v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v); // some IdPs send numeric user ids
  throw new InvalidTokenError(`claim ${path} is not a string`);
}

const okType = (typ: unknown) =>
  typ === undefined ||
  (typeof typ === 'string' && ['jwt', 'at+jwt', 'application/at+jwt'].includes(typ.toLowerCase()));

/** Returns the boundary. Nothing is fetched until the first token arrives. */
export function createBoundary(options: BoundaryOptions): Boundary {
  const { issuer, audience, clientId } = options;
  if (!issuer || !audience || !clientId)
    throw new TypeError('mcp: issuer, audience and clientId are required');
  const m = {
    subject: options.claims?.subject ?? 'sub',
    tenant: options.claims?.tenant ?? 'tenant',
    defaultTenant: options.claims?.defaultTenant,
    scopes: options.claims?.scopes ?? 'scope',
    session: options.claims?.session ?? 'sid',
    agentId: options.claims?.agentId,
  };
  if (!options.agentId && !m.agentId) throw new TypeError('mcp: set agentId or claims.agentId');
  const mode = options.mode ?? 'on_behalf_of';
  if (!['on_behalf_of', 'service_identity', 'restricted_user'].includes(mode)) {
    throw new TypeError(`mcp: unknown delegation mode ${mode}`);
  }
  const leeway = options.leeway ?? 30;
  const now = options.now ?? Date.now;
  const doFetch = options.fetch ?? ((...a: Parameters<typeof fetch>) => globalThis.fetch(...a));
  const jwks = createRemoteJWKSet(
    new URL(options.jwksUri ?? `${issuer.replace(/\/$/, '')}/.well-known/jwks.json`),
    {
      cooldownDuration: options.jwksCooldown ?? 30_000,
      cacheMaxAge: options.jwksMaxAge ?? 600_000,
      [customFetch]: (url, init) => doFetch(url, init),
    },
  );
  const algorithms = [...(options.algorithms ?? ['ES256', 'ES384', 'EdDSA', 'RS256', 'PS256'])];
  const sessions = new SessionOwners(options.maxSessions);
  const bindSessions = options.bindSessions ?? true;

  const verifier: OAuthTokenVerifier = {
    async verifyAccessToken(token: string): Promise<AuthInfo> {
      if (token.length > 8192) throw new InvalidTokenError('token too large');
      let claims: JWTPayload;
      try {
        const r = await jwtVerify(
          token,
          async (header, t) => {
            for (const member of ['jku', 'x5u', 'jwk', 'x5c'] as const) {
              if (header[member] !== undefined)
                throw new InvalidTokenError('the token header must not carry or point at a key');
            }
            if (!okType(header.typ)) throw new InvalidTokenError('wrong token type');
            try {
              return await jwks(header, t);
            } catch (e) {
              if (
                e instanceof joseErrors.JWKSNoMatchingKey ||
                e instanceof joseErrors.JWKSMultipleMatchingKeys
              ) {
                throw new InvalidTokenError("no key with the token's kid at the identity provider");
              }
              throw new ServerError('token verification temporarily unavailable');
            }
          },
          {
            issuer,
            audience,
            algorithms,
            clockTolerance: leeway,
            currentDate: new Date(now()),
            requiredClaims: ['exp'],
          },
        );
        claims = r.payload;
      } catch (e) {
        if (e instanceof InvalidTokenError || e instanceof ServerError) throw e;
        throw new InvalidTokenError(describe(e));
      }
      if (typeof claims.iat === 'number' && claims.iat > now() / 1000 + leeway) {
        throw new InvalidTokenError('token issued in the future');
      }
      const sub = stringClaim(claims, m.subject);
      if (!sub) throw new InvalidTokenError(`claim ${m.subject} (the user) missing`);
      const tenant = stringClaim(claims, m.tenant) ?? m.defaultTenant;
      if (!tenant) throw new InvalidTokenError(`claim ${m.tenant} (the tenant) missing`);
      const agentId = (m.agentId ? stringClaim(claims, m.agentId) : undefined) ?? options.agentId;
      if (!agentId) throw new InvalidTokenError(`claim ${m.agentId} (the agent) missing`);
      let scopes: string[] = [];
      const rawScopes = lookup(claims, m.scopes);
      if (typeof rawScopes === 'string') scopes = rawScopes.split(' ').filter((s) => s !== '');
      else if (Array.isArray(rawScopes)) {
        if (!rawScopes.every((s) => typeof s === 'string'))
          throw new InvalidTokenError(`claim ${m.scopes} holds a non-string scope`);
        scopes = rawScopes;
      } else if (rawScopes !== undefined && rawScopes !== null) {
        throw new InvalidTokenError(`claim ${m.scopes} is neither a string nor an array`);
      }
      const sid = stringClaim(claims, m.session);
      const identity: Identity = {
        actor: { type: 'user', sub, tenant },
        agent: { type: 'mcp_agent', id: agentId, client_id: clientId },
        session: { id: sid ?? '' },
        scopes,
        mode,
        issuer,
        expiresAt: claims.exp as number,
      };
      return {
        // The token stays out of AuthInfo: tools receive this object as extra.authInfo.
        token: '',
        clientId: stringClaim(claims, 'client_id') ?? stringClaim(claims, 'azp') ?? '',
        scopes,
        expiresAt: claims.exp as number,
        extra: { [IDENTITY_KEY]: identity },
      };
    },
  };

  const guard: RequestHandler = (req, res, next) => {
    const sendInvalid = (d: string) => {
      res.setHeader('www-authenticate', `Bearer error="invalid_request", error_description="${d}"`);
      res.setHeader('cache-control', 'no-store');
      res.status(400).json({ error: 'invalid_request', error_description: d });
    };
    if (/[?&]access_token=/.test(req.originalUrl ?? req.url ?? '')) {
      sendInvalid('send the token in the Authorization header, not the URL');
      return;
    }
    if (authorizationCount(req) > 1) {
      // Node keeps the first in req.headers; the SDK would pass every one on in requestInfo.headers.
      sendInvalid('more than one Authorization header');
      return;
    }
    next();
  };

  const bearer = requireBearerAuth({
    verifier,
    ...(options.requiredScopes ? { requiredScopes: options.requiredScopes } : {}),
    ...(options.resourceMetadataUrl ? { resourceMetadataUrl: options.resourceMetadataUrl } : {}),
  });

  const context: RequestHandler = (req: Request, res: Response, next: NextFunction) => {
    const auth = (req as Request & { auth?: AuthInfo }).auth;
    const base = auth?.extra?.[IDENTITY_KEY] as Identity | undefined;
    if (!auth || !base) {
      next(new Error('mcp: the boundary context middleware ran without requireBearerAuth'));
      return;
    }
    const header = (name: string) => {
      const v = req.headers[name];
      return Array.isArray(v) ? v[0] : v;
    };
    const sessionHeader = header('mcp-session-id');
    const tp = parseTraceparent(header('traceparent'));
    const identity: Identity = {
      ...base,
      session: {
        id: base.session.id || sessionHeader || `sess_${randomId(12)}`,
        trace_id: tp?.traceId ?? newTraceId(),
      },
      traceFlags: tp?.flags ?? '01',
      ...(tp ? { parentSpanId: tp.parentId } : {}),
    };
    if (bindSessions && sessionHeader !== undefined && !sessions.allows(sessionHeader, identity)) {
      // Another user's session, or one the boundary never saw: the same answer as an unknown session.
      res
        .status(404)
        .json({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null });
      return;
    }
    stripToken(req);
    (req as Request & { auth?: AuthInfo }).auth = {
      token: '',
      clientId: auth.clientId,
      scopes: [...auth.scopes],
      ...(auth.expiresAt === undefined ? {} : { expiresAt: auth.expiresAt }),
      extra: { [IDENTITY_KEY]: identity },
    };
    next();
  };

  return {
    verifier,
    middleware: [guard, bearer, context],
    sessions,
    sessionIdGenerator(req) {
      return () => {
        const id = identityOfRequest(req);
        if (!id)
          throw new NoIdentityError(
            'mcp: sessionIdGenerator used on a request that did not pass the boundary',
          );
        const sessionId = randomUUID();
        sessions.bind(sessionId, id);
        return sessionId;
      };
    },
  };
}

function authorizationCount(req: IncomingMessage): number {
  let n = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]?.toLowerCase() === 'authorization') n++;
  }
  return n;
}

/**
 * Removes the Authorization header from every view of the request: `headers`, `rawHeaders` (from
 * which the SDK's transport rebuilds `extra.requestInfo.headers`) and `headersDistinct`.
 */
export function stripToken(req: IncomingMessage): void {
  delete req.headers.authorization;
  const raw: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i] as string;
    if (name.toLowerCase() !== 'authorization') raw.push(name, req.rawHeaders[i + 1] as string);
  }
  req.rawHeaders = raw;
  const distinct: Record<string, string[]> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const k = (raw[i] as string).toLowerCase();
    const list = distinct[k] ?? [];
    list.push(raw[i + 1] as string);
    distinct[k] = list;
  }
  // Node computes headersDistinct lazily and caches it: replace it rather than trust it was unread.
  Object.defineProperty(req, 'headersDistinct', {
    value: distinct,
    configurable: true,
    enumerable: true,
    writable: true,
  });
}

function identityOfRequest(req: IncomingMessage): Identity | undefined {
  const auth = (req as IncomingMessage & { auth?: AuthInfo }).auth;
  return auth?.extra?.[IDENTITY_KEY] as Identity | undefined;
}

function describe(e: unknown): string {
  if (e instanceof joseErrors.JWTExpired) return 'token expired';
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === 'iss') return 'wrong issuer';
    if (e.claim === 'aud') return 'token is not for this MCP server (audience)';
    if (e.claim === 'nbf') return 'token not yet valid';
    return `claim ${e.claim} missing or invalid`;
  }
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return 'algorithm not allowed';
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return 'bad signature';
  return 'malformed token';
}

/** What a tool callback receives as `extra` (the fields the boundary reads). */
export interface ToolExtra {
  authInfo?: AuthInfo;
  sessionId?: string;
  _meta?: Record<string, unknown>;
}

/**
 * The identity of the request a tool handler serves. A `traceparent` in the request's `_meta`
 * takes precedence over the HTTP header's. Throws {@link NoIdentityError} when the request did not
 * pass the boundary or the user's token has expired: a tool must never act as nobody.
 */
export function identity(extra: ToolExtra, now: () => number = Date.now): Identity {
  const id = extra?.authInfo?.extra?.[IDENTITY_KEY] as Identity | undefined;
  if (!id || typeof id !== 'object' || !id.actor) throw new NoIdentityError();
  if (id.expiresAt !== undefined && now() >= id.expiresAt * 1000) {
    throw new NoIdentityError("the user's token has expired");
  }
  const tp = parseTraceparent(extra._meta?.traceparent);
  if (!tp) return id;
  return {
    ...id,
    session: { ...id.session, trace_id: tp.traceId },
    traceFlags: tp.flags,
    parentSpanId: tp.parentId,
  };
}

/**
 * Wraps a tool callback so that it receives the caller's identity first:
 * `server.registerTool(name, config, withIdentity(async (id, args, extra) => …))`. Without an
 * identity the call fails with {@link NoIdentityError} (the SDK turns it into a tool error).
 */
export function withIdentity<P extends unknown[], R>(
  handler: (identity: Identity, ...params: P) => R,
): (...params: P) => R {
  return (...params: P) => {
    const extra = params[params.length - 1] as ToolExtra;
    return handler(identity(extra), ...params);
  };
}

/**
 * What knows the MCP client's declared capabilities: the `McpServer` a tool is registered on (or
 * its low-level `Server`).
 */
export type CapabilitiesSource =
  | { getClientCapabilities(): ClientCapabilities | undefined }
  | { readonly server: { getClientCapabilities(): ClientCapabilities | undefined } };

function capabilitiesOf(source: CapabilitiesSource): ClientCapabilities | undefined {
  return 'server' in source ? source.server.getClientCapabilities() : source.getClientCapabilities();
}

/**
 * Whether the MCP client declared URL-mode elicitation (`capabilities.elicitation.url`). A
 * stateless server that builds a fresh `McpServer` per HTTP request never sees the client's
 * `initialize`, so it cannot know: false.
 */
export function supportsUrlElicitation(source: CapabilitiesSource): boolean {
  return capabilitiesOf(source)?.elicitation?.url !== undefined;
}

/** What to tell the user about the link (as Go's `GrantRequestLink.Message`). */
export function linkMessage(link: GrantRequestLink, purpose?: string): string {
  const msg = `Approve access in your browser: ${link.url}`;
  return purpose ? `${purpose}. ${msg}` : msg;
}

/**
 * The user was asked to grant access and has not yet: thrown from a tool, the SDK turns it into a
 * tool error whose text carries the link. `cause` is Mandate's refusal.
 */
export class ConsentRequiredError extends Error {
  /** The grant request the user is asked to approve. */
  readonly link: GrantRequestLink;
  constructor(refusal: GrantRequiredError, link: GrantRequestLink, purpose?: string) {
    super(`${refusal.message}. ${linkMessage(link, purpose)}`, { cause: refusal });
    this.name = 'ConsentRequiredError';
    this.link = link;
  }
}

/**
 * Turns "no grant" into "ask the user" in a tool handler (as Go's `boundary.AskUser`). When
 * `error` is a refusal the user can lift themselves ({@link grantRequired}: `no_active_grant` or
 * `grant_does_not_cover_audience_or_mode` on an audience that allows user consent), it creates a
 * grant request for identity's user and returns what the tool should throw:
 *
 * - to a client that declared URL-mode elicitation, the SDK's `UrlElicitationRequiredError`
 *   (JSON-RPC error -32042) naming the consent page, with the request id as `elicitationId`: the
 *   client opens the link and retries the call once the user is done;
 * - otherwise a {@link ConsentRequiredError}, which the SDK answers as a tool error whose text
 *   carries the link.
 *
 * Any other error is returned unchanged; if the grant request itself is refused, Mandate's
 * refusal of it is returned (its `cause` is the original error).
 *
 * ```ts
 * withIdentity(async (user, args) => {
 *   try {
 *     return await readOrders(user, args);
 *   } catch (e) {
 *     throw await askUser(mandate, server, user, e, { audiences: ['orders_api'], scopes: ['orders:read'], purpose: 'Read your orders' });
 *   }
 * })
 * ```
 */
export async function askUser(
  delegator: Pick<Delegator, 'requestGrant'>,
  server: CapabilitiesSource,
  identity: Identity,
  error: unknown,
  ask: GrantRequestOptions,
): Promise<unknown> {
  const refusal = grantRequired(error);
  if (!refusal) return error;
  let link: GrantRequestLink;
  try {
    link = await delegator.requestGrant(identity, ask);
  } catch (e) {
    // Keep what the tool was refused for reachable from what it answers (Go joins the two).
    if (e instanceof Error && e.cause === undefined) {
      Object.defineProperty(e, 'cause', { value: refusal, writable: true, configurable: true });
    }
    return e;
  }
  const message = linkMessage(link, ask.purpose);
  if (supportsUrlElicitation(server)) {
    return new UrlElicitationRequiredError(
      [{ mode: 'url', message, url: link.url, elicitationId: link.requestId }],
      message,
    );
  }
  return new ConsentRequiredError(refusal, link, ask.purpose);
}
