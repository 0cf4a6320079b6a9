/**
 * Typed errors for Mandate's token and grant request endpoints (docs/reasons.md).
 *
 * Every error answer of `POST /oauth2/token` (and of `/oauth2/grant-requests`) carries `error` (RFC 6749 §5.2) and `reason`, a
 * stable code. The SDK turns the pair into one of three kinds, each a subclass of
 * {@link MandateError} so that `instanceof` tells them apart:
 *
 * - {@link GrantRequiredError} — the user has not granted it: ask them, then retry.
 * - {@link ClientError} — the code or the configuration is wrong: retrying as is fails again.
 * - {@link UnavailableError} — Mandate (or what it depends on) is unavailable: retry later.
 *
 * @module
 */

/** What a caller does about a refusal. */
export type MandateErrorKind = 'grant_required' | 'client_error' | 'unavailable';

/**
 * The kind of every stable `reason` code the token endpoint answers. Kept by hand, checked by a
 * test against the server's `testdata/reasons.json`.
 */
export const REASON_KINDS: Readonly<Record<string, MandateErrorKind>> = Object.freeze({
  client_authentication_failed: 'client_error',
  rate_limited: 'unavailable',
  malformed_request: 'client_error',
  request_too_large: 'client_error',
  unsupported_grant_type: 'client_error',
  grant_type_not_allowed: 'client_error',
  missing_subject_token: 'client_error',
  bad_subject_token_type: 'client_error',
  subject_token_too_large: 'client_error',
  missing_target: 'client_error',
  bad_requested_token_type: 'client_error',
  envelope_bad_format: 'client_error',
  envelope_too_large: 'client_error',
  envelope_wrong_type: 'client_error',
  envelope_alg_not_allowed: 'client_error',
  envelope_unknown_kid: 'client_error',
  envelope_bad_signature: 'client_error',
  envelope_expired: 'client_error',
  envelope_not_yet_valid: 'client_error',
  envelope_lifetime_too_long: 'client_error',
  envelope_issuer_mismatch: 'client_error',
  envelope_audience_mismatch: 'client_error',
  envelope_client_mismatch: 'client_error',
  envelope_missing_member: 'client_error',
  envelope_bad_value: 'client_error',
  client_keys_invalid: 'client_error',
  client_keys_unavailable: 'unavailable',
  tenant_not_allowed: 'client_error',
  act_chain_too_deep: 'client_error',
  unknown_audience: 'client_error',
  unknown_resource: 'client_error',
  conflicting_targets: 'client_error',
  audience_not_in_envelope: 'client_error',
  audience_not_allowed_for_client: 'client_error',
  mode_not_allowed_for_audience: 'client_error',
  mode_not_allowed_for_client: 'client_error',
  service_actor_requires_service_identity: 'client_error',
  service_actor_not_allowed: 'client_error',
  no_active_grant: 'grant_required',
  grant_does_not_cover_audience_or_mode: 'grant_required',
  grant_expires_too_soon: 'grant_required',
  grant_revoked: 'grant_required',
  scope_not_allowed: 'grant_required',
  no_effective_scope: 'grant_required',
  envelope_replayed: 'client_error',
  storage_unavailable: 'unavailable',
  signing_failed: 'unavailable',
  internal_error: 'unavailable',
  token_not_issued_to_client: 'client_error',
  // Grant requests (docs/protocol.md#grant-requests-and-user-consent) and the consent pages.
  invalid_grant_request: 'client_error',
  audience_requires_admin_consent: 'client_error',
  consent_duration_too_long: 'client_error',
  scope_not_requestable: 'client_error',
  grant_request_not_found: 'client_error',
  grant_request_expired: 'client_error',
  grant_request_already_decided: 'client_error',
  grant_request_changed: 'client_error',
  consent_wrong_user: 'client_error',
  consent_wrong_tenant: 'client_error',
  csrf_check_failed: 'client_error',
  grant_not_yours: 'client_error',
  grant_already_revoked: 'client_error',
  sign_in_failed: 'client_error',
  sign_in_without_tenant: 'client_error',
});

/**
 * The kind of a refusal: from `reason` when the SDK knows it; otherwise status 429, any 5xx or no
 * answer at all (status 0) means `unavailable`, and everything else `client_error`.
 */
export function kindOf(status: number, reason: string | undefined): MandateErrorKind {
  if (reason !== undefined && Object.hasOwn(REASON_KINDS, reason)) {
    return REASON_KINDS[reason] as MandateErrorKind;
  }
  if (status === 0 || status === 429 || status >= 500) return 'unavailable';
  return 'client_error';
}

/** What a {@link MandateError} is built from. */
export interface MandateErrorInit {
  /** The OAuth `error` code (`invalid_request`, …), or `network_error` when nothing answered. */
  code: string;
  /** The stable reason code, when Mandate sent one. */
  reason?: string;
  /** Mandate's `error_description`, written for developers. */
  description?: string;
  /** The HTTP status; 0 when no answer arrived. */
  status: number;
  /** The audience the token was asked for. */
  audience: string;
  /** Seconds to wait, from `Retry-After`. */
  retryAfter?: number;
  /** The tenant of the identity the exchange was for. */
  tenant?: string;
  /** The user (actor.sub) of the identity the exchange was for. */
  subject?: string;
  /** The scopes that were requested, if any. */
  scopes?: readonly string[];
  /** The underlying failure (a network error), for logs. */
  cause?: unknown;
  /** Overrides the kind derived from status and reason (for failures that are not Mandate's answer). */
  kind?: MandateErrorKind;
  /**
   * Mandate's `grant_request_endpoint`: present on a refusal for lack of a grant that the user may
   * give themselves (docs/protocol.md#grant-requests-and-user-consent). Kept on {@link GrantRequiredError}.
   */
  grantRequestEndpoint?: string;
  /** What was refused, for the message; default `a token for <audience>`. */
  operation?: string;
}

/**
 * Mandate refused (or could not answer) a token exchange. Its message names the audience and
 * Mandate's reason; it never holds a token or a secret.
 */
export class MandateError extends Error {
  /** The OAuth `error` code, or `network_error`. */
  readonly code: string;
  /** The stable reason code (`no_active_grant`, `envelope_replayed`, …), when Mandate sent one. */
  readonly reason: string | undefined;
  /** What to do: ask the user, fix the code or configuration, or retry later. */
  readonly kind: MandateErrorKind;
  /** The HTTP status (0 when no answer arrived). */
  readonly status: number;
  /** The audience the token was for. */
  readonly audience: string;
  /** Seconds to wait before retrying, from `Retry-After`. */
  readonly retryAfter: number | undefined;
  /** Mandate's `error_description`. */
  readonly description: string | undefined;
  /** The identity's tenant. */
  readonly tenant: string | undefined;
  /** The identity's user. */
  readonly subject: string | undefined;
  /** The scopes that were requested. */
  readonly scopes: readonly string[] | undefined;

  constructor(init: MandateErrorInit) {
    const what = init.operation ?? `a token for ${init.audience}`;
    let msg = `Mandate refused ${what}: ${init.reason ?? init.code}`;
    if (init.code === 'network_error') msg = `Mandate could not be reached for ${what}`;
    if (init.description) msg += ` (${init.description})`;
    super(msg, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.reason = init.reason;
    this.kind = init.kind ?? kindOf(init.status, init.reason);
    this.status = init.status;
    this.audience = init.audience;
    this.retryAfter = init.retryAfter;
    this.description = init.description;
    this.tenant = init.tenant;
    this.subject = init.subject;
    this.scopes = init.scopes;
  }
}

/**
 * The user has not granted what was asked (`reason` `no_active_grant`, `scope_not_allowed`, …):
 * ask them to approve a grant request, then retry. `tenant`, `subject`, `audience` and `scopes`
 * say what to ask for; `grantRequestEndpoint` is set when the audience lets the user grant it
 * themselves (see {@link grantRequired} and the delegator's `requestGrant`).
 */
export class GrantRequiredError extends MandateError {
  /** Where the user can be asked (Mandate's `grant_request_endpoint`), when the audience allows it. */
  readonly grantRequestEndpoint: string | undefined;

  constructor(init: MandateErrorInit) {
    super(init);
    this.grantRequestEndpoint = init.grantRequestEndpoint;
  }
}

/** The request or the configuration is wrong; retrying as is fails again. */
export class ClientError extends MandateError {}

/** Mandate or something it depends on is unavailable: retry after `retryAfter` seconds. */
export class UnavailableError extends MandateError {}

/** The refusals a user can lift by approving a grant request (as Go's `boundary.GrantRequired`). */
const USER_CAN_GRANT: ReadonlySet<string> = new Set([
  'no_active_grant',
  'grant_does_not_cover_audience_or_mode',
]);

/**
 * `e` when it is a refusal for lack of a grant that the user may give themselves (reason
 * `no_active_grant` or `grant_does_not_cover_audience_or_mode`, on an audience whose refusal named
 * a `grant_request_endpoint`); otherwise undefined. Other grant refusals (`scope_not_allowed`, an
 * `admin_only` audience) need an admin or a different request.
 */
export function grantRequired(e: unknown): GrantRequiredError | undefined {
  if (!(e instanceof GrantRequiredError) || !e.grantRequestEndpoint) return undefined;
  return e.reason !== undefined && USER_CAN_GRANT.has(e.reason) ? e : undefined;
}

/** Builds the subclass of {@link MandateError} that fits the status and reason. */
export function mandateError(init: MandateErrorInit): MandateError {
  switch (init.kind ?? kindOf(init.status, init.reason)) {
    case 'grant_required':
      return new GrantRequiredError(init);
    case 'unavailable':
      return new UnavailableError(init);
    default:
      return new ClientError(init);
  }
}

/** Parses `Retry-After` as delay-seconds or an HTTP date; undefined when absent or malformed. */
export function parseRetryAfter(value: string | null, nowMs: number = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d{1,9}$/.test(v)) return Number(v);
  const t = Date.parse(v);
  if (Number.isNaN(t)) return undefined;
  return Math.max(0, Math.ceil((t - nowMs) / 1000));
}
