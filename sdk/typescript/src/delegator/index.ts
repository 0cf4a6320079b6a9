/**
 * The delegator: exchanges an identity at Mandate for a short-lived token for one downstream
 * audience (RFC 8693), caches it until shortly before it expires, and calls that audience's API
 * with it — sending the token and the trace context only to the audience's own base URLs.
 *
 * @module
 */
import { type CryptoKey, importJWK, type JWK, type KeyObject, SignJWT } from 'jose';
import type {
  Act,
  Actor,
  Agent,
  DelegationMode,
  EnvelopeAlgorithm,
  EnvelopeSigner,
  Session,
} from '../envelope/index.js';
import { ENVELOPE_TOKEN_TYPE, EnvelopeError } from '../envelope/index.js';
import {
  ClientError,
  kindOf,
  type MandateError,
  type MandateErrorKind,
  mandateError,
  parseRetryAfter,
  UnavailableError,
} from '../errors/index.js';
import { randomId } from '../internal/random.js';
import { childTraceparent } from '../internal/trace.js';
import { isUnder, parseBaseUrl } from '../internal/urls.js';

export {
  childTraceparent,
  newSpanId,
  newTraceId,
  parseTraceparent,
  type Traceparent,
} from '../internal/trace.js';

/**
 * The execution identity of one request: who the work is for, which agent does it, in which session
 * and trace. The MCP boundary derives it from a validated user token; it never holds the token.
 */
export interface Identity {
  /** The user (or service) the work is for. Trust only this for "who". */
  readonly actor: Actor;
  /** The agent runtime, with the MCP server's client_id. */
  readonly agent: Agent & { client_id: string };
  /** The session id and the trace id of this request. */
  readonly session: Session;
  /** The scopes the user's token granted; Mandate only ever narrows them. */
  readonly scopes: readonly string[];
  /** The delegation mode envelopes ask for. */
  readonly mode: DelegationMode;
  /** The identity provider that issued the user's token. */
  readonly issuer?: string;
  /** When the user's token expires (seconds since the epoch); the identity is not used after it. */
  readonly expiresAt?: number;
  /** The W3C trace flags of the caller ("01" = sampled). */
  readonly traceFlags?: string;
  /** The caller's W3C parent span id, when a traceparent came in. */
  readonly parentSpanId?: string;
  /** A prior actor chain, when this server itself acts for another agent. */
  readonly act?: Act;
}

/** How the MCP server authenticates to Mandate's token endpoint. */
export type ClientAuth =
  | {
      /** HTTP Basic with the form-encoded client_id and secret (RFC 6749 §2.3.1). */
      method: 'client_secret_basic';
      clientSecret: string;
    }
  | {
      /** client_id and client_secret in the form body. */
      method: 'client_secret_post';
      clientSecret: string;
    }
  | {
      /** A signed assertion (RFC 7523) with a key registered in the client's JWKS. */
      method: 'private_key_jwt';
      /** The private key: a JWK with private members, a CryptoKey or a KeyObject. */
      key: JWK | CryptoKey | KeyObject;
      /** The key id registered at Mandate; default the JWK's own `kid`. */
      kid?: string;
      /** Default: the JWK's `alg`, else ES256. */
      alg?: EnvelopeAlgorithm;
    };

/** One downstream API the delegator may call. */
export interface AudienceOptions {
  /**
   * Where the API lives. A token (and a traceparent) is attached only to requests under one of
   * these: the same scheme, host and port, and a path at or below the base path (on a segment
   * boundary). Requests anywhere else are refused before anything is sent.
   */
  baseUrls: readonly (string | URL)[];
  /** Scopes to request by default; none means whatever Mandate's policy makes effective. */
  scopes?: readonly string[];
}

/** Options of {@link Delegator}. */
export interface DelegatorOptions {
  /** Mandate's issuer URL (no trailing slash). */
  issuer: string;
  /** Mandate's token endpoint. Default `${issuer}/oauth2/token`. */
  tokenEndpoint?: string;
  /** The MCP server's client_id at Mandate. */
  clientId: string;
  /** How to authenticate to Mandate. */
  clientAuth: ClientAuth;
  /** Signs the envelopes; its clientId and issuer must match these options. */
  signer: EnvelopeSigner;
  /** The audiences this server calls, by audience id. */
  audiences: Readonly<Record<string, AudienceOptions>>;
  /** The envelopes' `delegation.allowed`; default empty (any audience the grant covers). */
  allowed?: readonly string[];
  /** Envelope lifetime in seconds; default 60 (never beyond the user's token). */
  envelopeLifetime?: number;
  /**
   * How long before expiry a cached token stops being handed out, in seconds: at most this, and
   * at most a fifth of the token's lifetime. Default 30.
   */
  refreshBefore?: number;
  /** Cache bound (entries); default 10,000. The oldest entries go first when it is full. */
  maxCacheEntries?: number;
  /** Timeout of one exchange, in milliseconds; default 10,000. */
  timeout?: number;
  /** The fetch used for Mandate and for the APIs; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** The clock, in milliseconds since the epoch; default `Date.now`. */
  now?: () => number;
}

/** Options of one token request. */
export interface TokenOptions {
  /** Scopes to request; default the audience's configured scopes. */
  scopes?: readonly string[];
}

/** What an MCP server asks a user to grant (docs/protocol.md#grant-requests-and-user-consent). */
export interface GrantRequestOptions {
  /** The audiences the grant should cover. */
  audiences: readonly string[];
  /** The scopes asked for. */
  scopes: readonly string[];
  /** The delegation modes asked for; default (none) means `on_behalf_of`. */
  modes?: readonly DelegationMode[];
  /** How long the grant lasts once approved, in seconds; default the audiences' `max_consent_duration`. */
  duration?: number;
  /** Shown to the user on the consent page: say why, in their words (at most 500 characters). */
  purpose: string;
  /** Ask for a grant for every agent of this client rather than the identity's agent. */
  anyAgent?: boolean;
}

/** A created grant request: where the user approves it. */
export interface GrantRequestLink {
  readonly requestId: string;
  /** This request's consent page (`verification_uri_complete`): give it to the user. */
  readonly url: string;
  /** The consent page listing every request waiting for the signed-in user. */
  readonly verificationUri: string;
  /** Until when it can be decided, in seconds since the epoch. */
  readonly expiresAt: number;
  /** Poll its status no more often than this, in seconds. */
  readonly interval: number;
}

/** The states of a grant request. */
export type GrantRequestState = 'pending' | 'approved' | 'denied' | 'expired';

/** A grant request's state, as Mandate reports it to the client that created it. */
export interface GrantRequestStatus {
  readonly requestId: string;
  readonly status: GrantRequestState;
  /** The grant an approval created. */
  readonly grantId?: string;
  /** While pending: until when it can be decided, in seconds since the epoch. */
  readonly expiresAt?: number;
  /** While pending: poll no more often than this, in seconds. */
  readonly interval?: number;
}

const GRANT_REQUEST_STATES: ReadonlySet<string> = new Set(['pending', 'approved', 'denied', 'expired']);
/** RFC 8628 §3.2's default when Mandate names no interval. */
const DEFAULT_POLL_INTERVAL = 5;

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A URL outside the audience's base URLs: the delegator refused to send anything there. */
export class RefusedURLError extends Error {
  readonly audience: string;
  readonly url: string;
  constructor(audience: string, url: URL) {
    super(
      `refusing to send a ${audience} token to ${url.origin}${url.pathname}: not under ${audience}'s base URLs`,
    );
    this.name = 'RefusedURLError';
    this.audience = audience;
    this.url = `${url.origin}${url.pathname}`;
  }
}

interface Cached {
  token: string;
  expiresAt: number; // ms
  useUntil: number; // ms
}

const MAX_ANSWER_BYTES = 64 * 1024;
const MAX_REDIRECTS = 5;
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';

const sortedSet = (l: readonly string[] | undefined): string[] => [...new Set(l ?? [])].sort();

/**
 * Exchanges identities for Mandate access tokens, one per downstream audience, and caches each
 * per (actor type, tenant, user, agent, mode, audience, requested scopes, identity scopes).
 * Concurrent requests for the same key share one exchange; refusals are never cached.
 */
export class Delegator {
  readonly #o: Required<Omit<DelegatorOptions, 'tokenEndpoint' | 'allowed'>> & {
    tokenEndpoint: string;
    allowed: readonly string[];
  };
  readonly #bases: Map<string, URL[]>;
  readonly #cache = new Map<string, Cached>();
  readonly #inflight = new Map<string, Promise<Cached>>();
  #exchanges = 0;
  #assertionKey: Promise<CryptoKey | KeyObject | Uint8Array> | undefined;

  constructor(options: DelegatorOptions) {
    const { issuer, clientId, clientAuth, signer } = options;
    if (!issuer || !clientId || !signer || !clientAuth) {
      throw new TypeError('delegator: issuer, clientId, clientAuth and signer are required');
    }
    if (issuer.endsWith('/')) throw new TypeError('delegator: issuer must not end with a slash');
    if (signer.clientId !== clientId || signer.issuer !== issuer) {
      throw new TypeError("delegator: the signer's clientId and issuer must be the delegator's");
    }
    if (clientAuth.method === 'client_secret_basic' || clientAuth.method === 'client_secret_post') {
      if (!clientAuth.clientSecret) throw new TypeError('delegator: clientSecret is required');
    } else if (clientAuth.method !== 'private_key_jwt') {
      throw new TypeError(
        `delegator: unknown client authentication method ${String((clientAuth as ClientAuth).method)}`,
      );
    }
    this.#bases = new Map();
    for (const [aud, a] of Object.entries(options.audiences ?? {})) {
      if (!a.baseUrls || a.baseUrls.length === 0)
        throw new TypeError(`delegator: audience ${aud} needs baseUrls`);
      this.#bases.set(aud, a.baseUrls.map(parseBaseUrl));
    }
    this.#o = {
      issuer,
      clientId,
      clientAuth,
      signer,
      audiences: options.audiences,
      tokenEndpoint: options.tokenEndpoint ?? `${issuer}/oauth2/token`,
      allowed: options.allowed ?? [],
      envelopeLifetime: options.envelopeLifetime ?? 60,
      refreshBefore: options.refreshBefore ?? 30,
      maxCacheEntries: Math.max(1, options.maxCacheEntries ?? 10_000),
      timeout: options.timeout ?? 10_000,
      fetch: options.fetch ?? ((...args) => globalThis.fetch(...args)),
      now: options.now ?? Date.now,
    };
  }

  /** How many exchanges this delegator has sent to Mandate. */
  get exchanges(): number {
    return this.#exchanges;
  }

  /** How many tokens the cache holds. */
  get cacheSize(): number {
    return this.#cache.size;
  }

  #key(id: Identity, audience: string, scopes: readonly string[] | undefined): string {
    // JSON keeps the parts apart whatever characters they hold. The identity's scopes bound what
    // Mandate issues: a token exchanged for a broader user token must not serve a narrower one.
    return JSON.stringify([
      id.actor.type,
      id.actor.tenant,
      id.actor.sub,
      id.agent.id,
      id.mode,
      audience,
      sortedSet(scopes),
      sortedSet(id.scopes),
    ]);
  }

  #scopes(audience: string, options?: TokenOptions): readonly string[] {
    return options?.scopes ?? this.#o.audiences[audience]?.scopes ?? [];
  }

  /**
   * An access token for audience, acting for identity. Rejects with a {@link MandateError}:
   * {@link GrantRequiredError} when the user has not granted it, {@link ClientError} when code
   * or configuration must change, {@link UnavailableError} when a retry may help.
   */
  async token(identity: Identity, audience: string, options?: TokenOptions): Promise<string> {
    return (await this.#token(identity, audience, this.#scopes(audience, options))).token;
  }

  /** Drops the cached token for (identity, audience, scopes), e.g. after the API refused it. */
  forget(identity: Identity, audience: string, options?: TokenOptions): void {
    this.#cache.delete(this.#key(identity, audience, this.#scopes(audience, options)));
  }

  async #token(id: Identity, audience: string, scopes: readonly string[]): Promise<Cached> {
    if (!id?.actor || !id.agent || !id.session) {
      throw new TypeError('delegator: an identity from the boundary is required');
    }
    const now = this.#o.now();
    if (id.expiresAt !== undefined && now >= id.expiresAt * 1000) {
      throw new ClientError({
        code: 'identity_expired',
        status: 0,
        kind: 'client_error',
        audience,
        description: "the user's token has expired",
        tenant: id.actor.tenant,
        subject: id.actor.sub,
      });
    }
    const key = this.#key(id, audience, scopes);
    const hit = this.#cache.get(key);
    if (hit && now < hit.useUntil) {
      // Refresh its place so the bound evicts the least recently used first.
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return hit;
    }
    let p = this.#inflight.get(key);
    if (!p) {
      p = this.#exchange(id, audience, scopes).then(
        (c) => {
          this.#inflight.delete(key);
          this.#store(key, c);
          return c;
        },
        (e: unknown) => {
          this.#inflight.delete(key);
          throw e;
        },
      );
      this.#inflight.set(key, p);
    }
    return p;
  }

  #store(key: string, c: Cached): void {
    const cache = this.#cache;
    cache.delete(key);
    if (cache.size >= this.#o.maxCacheEntries) {
      const now = this.#o.now();
      for (const [k, v] of cache) if (now >= v.useUntil) cache.delete(k);
      for (const k of cache.keys()) {
        if (cache.size < this.#o.maxCacheEntries) break;
        cache.delete(k);
      }
    }
    cache.set(key, c);
  }

  async #exchange(id: Identity, audience: string, scopes: readonly string[]): Promise<Cached> {
    const o = this.#o;
    const now = o.now();
    const iat = Math.floor(now / 1000);
    let exp = iat + o.envelopeLifetime;
    if (id.expiresAt !== undefined && id.expiresAt < exp) exp = Math.floor(id.expiresAt); // never outlive the user's proof
    const who = { audience, tenant: id.actor.tenant, subject: id.actor.sub, scopes };
    let envelope: string;
    try {
      envelope = await o.signer.sign({
        iat,
        exp,
        actor: id.actor,
        agent: { type: id.agent.type, id: id.agent.id, client_id: o.clientId },
        session: id.session,
        authorization: { scopes: [...id.scopes], confidence: 'verified' },
        delegation: { mode: id.mode, ...(o.allowed.length ? { allowed: [...o.allowed] } : {}) },
        ...(id.act ? { act: id.act } : {}),
      });
    } catch (e) {
      if (e instanceof EnvelopeError) {
        throw new ClientError({
          ...who,
          code: 'invalid_request',
          reason: e.wireReason,
          status: 0,
          description: e.message,
          cause: e,
        });
      }
      throw e;
    }
    const form = new URLSearchParams({
      grant_type: TOKEN_EXCHANGE,
      subject_token: envelope,
      subject_token_type: ENVELOPE_TOKEN_TYPE,
      audience,
    });
    if (scopes.length > 0) form.set('scope', scopes.join(' '));
    const headers = new Headers({
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    });
    const creds = await this.#credentials(iat);
    if (creds.authorization) headers.set('authorization', creds.authorization);
    for (const [k, v] of Object.entries(creds.fields)) form.set(k, v);
    this.#exchanges++;
    const { res, doc: body } = await this.#call(o.tokenEndpoint, 'POST', headers, form.toString(), who);
    if (res.status !== 200) {
      const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
      throw mandateError({
        ...who,
        code: str(body.error) ?? 'server_error',
        reason: str(body.reason),
        description: str(body.error_description) ?? (str(body.error) ? undefined : `HTTP ${res.status}`),
        status: res.status,
        retryAfter: parseRetryAfter(res.headers.get('retry-after'), o.now()),
        grantRequestEndpoint: str(body.grant_request_endpoint),
      });
    }
    const token = body.access_token;
    const expiresIn = body.expires_in;
    if (
      typeof token !== 'string' ||
      token === '' ||
      typeof expiresIn !== 'number' ||
      !(expiresIn > 0) ||
      typeof body.token_type !== 'string' ||
      body.token_type.toLowerCase() !== 'bearer'
    ) {
      throw new UnavailableError({
        ...who,
        code: 'invalid_response',
        status: 200,
        kind: 'unavailable',
        description: 'malformed token response',
      });
    }
    const life = expiresIn * 1000;
    const expiresAt = now + life;
    return { token, expiresAt, useUntil: expiresAt - Math.min(o.refreshBefore * 1000, life / 5) };
  }

  /**
   * The client's credentials, the one way every call to Mandate authenticates (RFC 6749 §2.3.1,
   * RFC 7523): a Basic header, or members for the body.
   */
  async #credentials(iat: number): Promise<{ authorization?: string; fields: Record<string, string> }> {
    const o = this.#o;
    const auth = o.clientAuth;
    if (auth.method === 'client_secret_basic') {
      const enc = (s: string) => encodeURIComponent(s).replace(/%20/g, '+');
      return { authorization: `Basic ${btoa(`${enc(o.clientId)}:${enc(auth.clientSecret)}`)}`, fields: {} };
    }
    if (auth.method === 'client_secret_post') {
      return { fields: { client_id: o.clientId, client_secret: auth.clientSecret } };
    }
    return {
      fields: {
        client_id: o.clientId,
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
        client_assertion: await this.#assertion(iat),
      },
    };
  }

  /**
   * Asks Mandate to have identity's user grant this client what `request` names (`POST
   * /oauth2/grant-requests`, docs/protocol.md#grant-requests-and-user-consent), for identity's agent unless `anyAgent`, and returns the link
   * to give the user: typically after a {@link GrantRequiredError} whose `grantRequestEndpoint` is
   * set (see `grantRequired`). Rejects with a {@link MandateError} when Mandate refuses: a
   * {@link ClientError} for `audience_requires_admin_consent` (an admin must grant it),
   * `consent_duration_too_long`, `invalid_grant_request` and every other refusal of the request
   * itself; an {@link UnavailableError} when a retry may help.
   */
  async requestGrant(identity: Identity, request: GrantRequestOptions): Promise<GrantRequestLink> {
    if (!identity?.actor || !identity.agent) {
      throw new TypeError('delegator: an identity from the boundary is required');
    }
    const { audiences, scopes, modes, duration, purpose, anyAgent } = request ?? ({} as GrantRequestOptions);
    if (!Array.isArray(audiences) || !Array.isArray(scopes)) {
      throw new TypeError('delegator: a grant request needs audiences and scopes');
    }
    if (duration !== undefined && !(Number.isSafeInteger(duration) && duration > 0)) {
      throw new TypeError('delegator: duration is a positive whole number of seconds');
    }
    const o = this.#o;
    const now = o.now();
    if (identity.expiresAt !== undefined && now >= identity.expiresAt * 1000) {
      // As for an exchange: an identity is not used after the user's proof of it expired.
      throw new ClientError({
        code: 'identity_expired',
        status: 0,
        kind: 'client_error',
        audience: audiences.join(' '),
        operation: `a grant request for ${audiences.join(' ')}`,
        description: "the user's token has expired",
        tenant: identity.actor.tenant,
        subject: identity.actor.sub,
      });
    }
    const body: Record<string, unknown> = {
      tenant: identity.actor.tenant,
      subject: identity.actor.sub,
      audiences: [...audiences],
      scopes: [...scopes],
      purpose: purpose ?? '',
    };
    if (!anyAgent && identity.agent.id) body.agent_id = identity.agent.id;
    if (modes && modes.length > 0) body.modes = [...modes];
    if (duration !== undefined) body.duration = duration;
    const creds = await this.#credentials(Math.floor(now / 1000));
    Object.assign(body, creds.fields);
    const headers = new Headers({ 'content-type': 'application/json', accept: 'application/json' });
    if (creds.authorization) headers.set('authorization', creds.authorization);
    const what = `a grant request for ${audiences.join(' ')}`;
    const { res, doc } = await this.#call(
      `${o.issuer}/oauth2/grant-requests`,
      'POST',
      headers,
      JSON.stringify(body),
      {
        audience: audiences.join(' '),
        operation: what,
        tenant: identity.actor.tenant,
        subject: identity.actor.sub,
        scopes,
      },
    );
    if (res.status !== 201) throw this.#refusal(res, doc, audiences.join(' '), what);
    const id = doc.request_id;
    const url = doc.verification_uri_complete;
    const expiresIn = doc.expires_in;
    const interval = doc.interval;
    if (
      typeof id !== 'string' ||
      id === '' ||
      typeof url !== 'string' ||
      // The link is shown to the user: it must be Mandate's own consent page.
      !url.startsWith(`${o.issuer}/`) ||
      typeof expiresIn !== 'number' ||
      !(expiresIn > 0) ||
      (interval !== undefined && typeof interval !== 'number')
    ) {
      throw new UnavailableError({
        code: 'invalid_response',
        status: res.status,
        kind: 'unavailable',
        audience: audiences.join(' '),
        operation: what,
        description: 'malformed grant request answer',
      });
    }
    return {
      requestId: id,
      url,
      verificationUri: typeof doc.verification_uri === 'string' ? doc.verification_uri : url,
      expiresAt: Math.floor(now / 1000) + expiresIn,
      interval: typeof interval === 'number' && interval > 0 ? interval : DEFAULT_POLL_INTERVAL,
    };
  }

  /**
   * Reads a grant request this client created (`GET /oauth2/grant-requests/{id}`; a `POST` with
   * the credentials in the body for `client_secret_post` and `private_key_jwt`). Poll no faster
   * than its `interval`, or use {@link Delegator.waitForGrant}.
   */
  async grantRequestStatus(requestId: string): Promise<GrantRequestStatus> {
    if (typeof requestId !== 'string' || requestId === '') {
      throw new TypeError('delegator: a grant request id is required');
    }
    const o = this.#o;
    const now = o.now();
    const creds = await this.#credentials(Math.floor(now / 1000));
    const headers = new Headers({ accept: 'application/json' });
    let method = 'GET';
    let body: string | undefined;
    if (creds.authorization) headers.set('authorization', creds.authorization);
    else {
      method = 'POST';
      headers.set('content-type', 'application/x-www-form-urlencoded');
      body = new URLSearchParams(creds.fields).toString();
    }
    const what = `the status of grant request ${requestId}`;
    const url = `${o.issuer}/oauth2/grant-requests/${encodeURIComponent(requestId)}`;
    const { res, doc } = await this.#call(url, method, headers, body, { audience: '', operation: what });
    if (res.status !== 200) throw this.#refusal(res, doc, '', what);
    const status = doc.status;
    if (doc.request_id !== requestId || typeof status !== 'string' || !GRANT_REQUEST_STATES.has(status)) {
      throw new UnavailableError({
        code: 'invalid_response',
        status: res.status,
        kind: 'unavailable',
        audience: '',
        operation: what,
        description: 'malformed grant request status',
      });
    }
    const out: { -readonly [K in keyof GrantRequestStatus]: GrantRequestStatus[K] } = {
      requestId,
      status: status as GrantRequestState,
    };
    if (typeof doc.grant_id === 'string' && doc.grant_id !== '') out.grantId = doc.grant_id;
    if (typeof doc.expires_in === 'number') out.expiresAt = Math.floor(now / 1000) + doc.expires_in;
    if (typeof doc.interval === 'number' && doc.interval > 0) out.interval = doc.interval;
    return out;
  }

  /**
   * Polls a grant request until the user (or an admin) decides it or it expires, waiting its
   * `interval` (as Mandate last said, at least 1 s) before each read: resolves with the final
   * status (`approved` with `grantId`, `denied` or `expired`). A read that fails with
   * {@link UnavailableError} is retried after `max(interval, retryAfter)` while the request can
   * still be decided; other refusals reject. Abort with `options.signal`.
   */
  async waitForGrant(
    request: GrantRequestLink | string,
    options: { signal?: AbortSignal } = {},
  ): Promise<GrantRequestStatus> {
    const id = typeof request === 'string' ? request : request.requestId;
    let interval = typeof request === 'string' ? DEFAULT_POLL_INTERVAL : request.interval;
    let expiresAt = typeof request === 'string' ? undefined : request.expiresAt;
    for (;;) {
      await sleep(Math.max(1, interval) * 1000, options.signal);
      let st: GrantRequestStatus;
      try {
        st = await this.grantRequestStatus(id);
      } catch (e) {
        const decidable = expiresAt !== undefined && this.#o.now() < expiresAt * 1000;
        if (!(e instanceof UnavailableError) || !decidable) throw e;
        interval = Math.max(interval, e.retryAfter ?? 0);
        continue;
      }
      if (st.status !== 'pending') return st;
      if (st.interval !== undefined) interval = st.interval;
      if (st.expiresAt !== undefined) expiresAt = st.expiresAt;
    }
  }

  /** Sends one client-authenticated call to Mandate and reads its JSON answer (bounded). */
  async #call(
    url: string,
    method: string,
    headers: Headers,
    body: string | undefined,
    who: {
      audience: string;
      operation?: string;
      tenant?: string;
      subject?: string;
      scopes?: readonly string[];
    },
  ): Promise<{ res: Response; doc: Record<string, unknown> }> {
    let res: Response;
    let text: string;
    try {
      res = await this.#o.fetch(url, {
        method,
        headers,
        ...(body === undefined ? {} : { body }),
        redirect: 'error',
        signal: AbortSignal.timeout(this.#o.timeout),
      });
      text = await readLimited(res, MAX_ANSWER_BYTES);
    } catch (e) {
      throw new UnavailableError({
        ...who,
        code: 'network_error',
        status: 0,
        description: e instanceof Error ? e.message : String(e),
        cause: e,
      });
    }
    let doc: Record<string, unknown> = {};
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed))
        doc = parsed as Record<string, unknown>;
    } catch {
      // Judged by its status.
    }
    return { res, doc };
  }

  /**
   * A refusal of the grant request endpoint as a typed error. Its reasons are the token endpoint's,
   * but none of them asks for a grant here: the request *is* the ask, so a `grant_required` reason
   * is a {@link ClientError}.
   */
  #refusal(res: Response, doc: Record<string, unknown>, audience: string, operation: string): MandateError {
    const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
    const reason = str(doc.reason);
    return mandateError({
      audience,
      operation,
      code: str(doc.error) ?? 'server_error',
      reason,
      description: str(doc.error_description) ?? (str(doc.error) ? undefined : `HTTP ${res.status}`),
      status: res.status,
      retryAfter: parseRetryAfter(res.headers.get('retry-after'), this.#o.now()),
      ...(kindOf(res.status, reason) === 'grant_required' ? { kind: 'client_error' as const } : {}),
    });
  }

  async #assertion(iat: number): Promise<string> {
    const auth = this.#o.clientAuth;
    if (auth.method !== 'private_key_jwt') throw new Error('unreachable');
    const jwk = isJWK(auth.key) ? auth.key : undefined;
    const alg = auth.alg ?? (jwk?.alg as EnvelopeAlgorithm | undefined) ?? 'ES256';
    const kid = auth.kid ?? jwk?.kid;
    if (!kid) throw new TypeError('delegator: private_key_jwt needs a kid');
    this.#assertionKey ??= jwk ? importJWK(jwk, alg) : Promise.resolve(auth.key as CryptoKey | KeyObject);
    return new SignJWT({})
      .setProtectedHeader({ alg, typ: 'JWT', kid })
      .setIssuer(this.#o.clientId)
      .setSubject(this.#o.clientId)
      .setAudience(this.#o.tokenEndpoint)
      .setIssuedAt(iat)
      .setExpirationTime(iat + 60)
      .setJti(randomId(16))
      .sign(await this.#assertionKey);
  }

  /**
   * Calls the API of audience as identity: the token and a traceparent are added to the request,
   * which must be under the audience's base URLs (else {@link RefusedURLError}, nothing sent).
   * Redirects are followed (at most 5) only while they stay under those base URLs; a redirect
   * anywhere else is returned to the caller unfollowed. When the API answers 401 invalid_token
   * (a revoked token, a clock disagreement) the token is dropped and the request retried once.
   */
  async fetch(
    identity: Identity,
    audience: string,
    input: string | URL,
    init: RequestInit = {},
    options?: TokenOptions,
  ): Promise<Response> {
    const bases = this.#bases.get(audience);
    if (!bases) throw new TypeError(`delegator: audience ${audience} is not configured`);
    const scopes = this.#scopes(audience, options);
    const first = new URL(String(input));
    if (!bases.some((b) => isUnder(first, b))) throw new RefusedURLError(audience, first);
    const replayable = isReplayable(init.body);
    let res = await this.#send(identity, audience, scopes, bases, first, init, replayable);
    if (
      res.status === 401 &&
      replayable &&
      /error="?invalid_token/.test(res.headers.get('www-authenticate') ?? '')
    ) {
      await res.body?.cancel();
      this.#cache.delete(this.#key(identity, audience, scopes));
      res = await this.#send(identity, audience, scopes, bases, first, init, replayable);
    }
    return res;
  }

  /** A fetch bound to one audience (and its scopes): `(identity, url, init) => Response`. */
  fetcher(
    audience: string,
    options?: TokenOptions,
  ): (identity: Identity, input: string | URL, init?: RequestInit) => Promise<Response> {
    if (!this.#bases.has(audience)) throw new TypeError(`delegator: audience ${audience} is not configured`);
    return (identity, input, init) => this.fetch(identity, audience, input, init, options);
  }

  async #send(
    id: Identity,
    audience: string,
    scopes: readonly string[],
    bases: URL[],
    start: URL,
    init: RequestInit,
    replayable: boolean,
  ): Promise<Response> {
    const mode = init.redirect ?? 'follow';
    let url = start;
    let method = (init.method ?? 'GET').toUpperCase();
    let body = init.body;
    const baseHeaders = new Headers(init.headers);
    for (let hop = 0; ; hop++) {
      const { token } = await this.#token(id, audience, scopes);
      const headers = new Headers(baseHeaders);
      headers.set('authorization', `Bearer ${token}`);
      const tp = childTraceparent(id.session.trace_id, id.traceFlags);
      if (tp) headers.set('traceparent', tp);
      else headers.delete('traceparent');
      const res = await this.#o.fetch(url, { ...init, method, body, headers, redirect: 'manual' });
      const location = res.headers.get('location');
      if (![301, 302, 303, 307, 308].includes(res.status) || location === null || mode === 'manual')
        return res;
      if (mode === 'error') {
        await res.body?.cancel();
        throw new TypeError(`fetch failed: ${audience} answered a redirect and redirect is "error"`);
      }
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        return res;
      }
      // Anywhere but the audience's own base URLs: the caller gets the 3xx, the target gets nothing.
      if (!bases.some((b) => isUnder(next, b))) return res;
      const keepsBody = res.status === 307 || res.status === 308;
      if (keepsBody && body != null && !replayable) return res;
      if (hop + 1 > MAX_REDIRECTS) {
        await res.body?.cancel();
        throw new TypeError(`fetch failed: more than ${MAX_REDIRECTS} redirects`);
      }
      await res.body?.cancel();
      if (!keepsBody && (res.status === 303 ? method !== 'HEAD' : method === 'POST')) {
        method = 'GET';
        body = undefined;
        for (const h of [
          'content-type',
          'content-length',
          'content-encoding',
          'content-language',
          'content-location',
        ]) {
          baseHeaders.delete(h);
        }
      }
      url = next;
    }
  }
}

function isJWK(k: unknown): k is JWK {
  return typeof k === 'object' && k !== null && 'kty' in k;
}

function isReplayable(body: RequestInit['body']): boolean {
  return !(typeof ReadableStream !== 'undefined' && body instanceof ReadableStream);
}

async function readLimited(res: Response, limit: number): Promise<string> {
  const len = Number(res.headers.get('content-length') ?? '0');
  if (len > limit) {
    await res.body?.cancel();
    throw new Error('answer too large');
  }
  const buf = await res.arrayBuffer();
  if (buf.byteLength > limit) throw new Error('answer too large');
  return new TextDecoder().decode(buf);
}

export type { MandateError, MandateErrorKind };
