package exchange

import "errors"

// Error codes: the RFC 6749 §5.2 / RFC 8693 §2.2.2 error values a refusal maps to. authz writes
// Code as "error" and Description as "error_description"; Reason goes to the audit log.
const (
	CodeInvalidRequest         = "invalid_request"
	CodeInvalidTarget          = "invalid_target"
	CodeInvalidScope           = "invalid_scope"
	CodeUnauthorizedClient     = "unauthorized_client"
	CodeInvalidClient          = "invalid_client" // Explain only: the endpoint's client authentication is authz's
	CodeServerError            = "server_error"
	CodeTemporarilyUnavailable = "temporarily_unavailable"
)

// Reason codes recorded in audit records (SPEC §8) and usable as metric labels. Envelope
// refusals use the envelope package's own reason codes, prefixed "envelope_".
const (
	ReasonClientAuthFailed       = "client_authentication_failed" // authz's reason for invalid_client
	ReasonGrantTypeNotAllowed    = "grant_type_not_allowed"
	ReasonMissingSubjectToken    = "missing_subject_token"
	ReasonBadSubjectTokenType    = "bad_subject_token_type"
	ReasonSubjectTokenTooLarge   = "subject_token_too_large"
	ReasonMissingTarget          = "missing_target"
	ReasonBadRequestedTokenType  = "bad_requested_token_type"
	ReasonTenantNotAllowed       = "tenant_not_allowed"
	ReasonActChainTooDeep        = "act_chain_too_deep"
	ReasonUnknownAudience        = "unknown_audience"
	ReasonUnknownResource        = "unknown_resource"
	ReasonConflictingTargets     = "conflicting_targets"
	ReasonAudienceNotInEnvelope  = "audience_not_in_envelope"
	ReasonAudienceNotForClient   = "audience_not_allowed_for_client"
	ReasonModeNotForAudience     = "mode_not_allowed_for_audience"
	ReasonModeNotForClient       = "mode_not_allowed_for_client"
	ReasonServiceActorMode       = "service_actor_requires_service_identity"
	ReasonServiceActorNotAllowed = "service_actor_not_allowed"
	ReasonNoActiveGrant          = "no_active_grant"
	ReasonGrantNotCovering       = "grant_does_not_cover_audience_or_mode"
	ReasonGrantExpiring          = "grant_expires_too_soon"
	ReasonScopeNotAllowed        = "scope_not_allowed"
	// ReasonScopeNotRequestable is a grant request asking for a scope no grant could hold
	// (the audiences do not define it, or the client may not have it): unlike
	// scope_not_allowed at the token endpoint, asking the user cannot fix it.
	ReasonScopeNotRequestable = "scope_not_requestable"
	ReasonNoScope             = "no_effective_scope"
	ReasonReplay              = "envelope_replayed"
	ReasonGrantRevoked        = "grant_revoked"
	ReasonStorageUnavailable  = "storage_unavailable"
	ReasonKeysUnavailable     = "client_keys_unavailable"
	ReasonClientKeysInvalid   = "client_keys_invalid"
	ReasonInternalError       = "internal_error"
	ReasonSigningFailed       = "signing_failed"
	ReasonGranted             = "granted"
)

// Error is a refused or failed exchange. Description is plain words for the client and never
// holds internal details; the cause (logs only) is reachable with errors.Unwrap.
type Error struct {
	Code        string
	Reason      string
	Description string
	// UserMayConsent marks a refusal for lack of a grant where the audience lets users grant
	// access themselves: the client may ask the user through a grant request (SPEC §11).
	UserMayConsent bool
	cause          error
}

func (e *Error) Error() string {
	return "exchange: " + e.Code + " (" + e.Reason + "): " + e.Description
}

// Unwrap returns the internal cause, for logs.
func (e *Error) Unwrap() error { return e.cause }

func deny(code, reason, description string) *Error {
	return &Error{Code: code, Reason: reason, Description: description}
}

func fail(code, reason, description string, cause error) *Error {
	return &Error{Code: code, Reason: reason, Description: description, cause: cause}
}

// unavailable is the refusal for a storage fault: the client may retry.
func unavailable(cause error) *Error {
	return fail(CodeTemporarilyUnavailable, ReasonStorageUnavailable,
		"the service is temporarily unavailable; retry later", cause)
}

// AsError returns the *Error in err's chain, or nil.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}
