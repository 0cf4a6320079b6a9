package envelope

import (
	"errors"
	"fmt"
)

// Reasons are stable codes for why an envelope was refused. Mandate records
// them in the audit log and metrics; the exchange maps all of them to
// invalid_request (RFC 8693 §2.2.2), except ReasonKeysUnavailable, which is
// the client's key server failing rather than the envelope being bad.
const (
	ReasonBadFormat        = "bad_format"        // not a compact JWS with a well-formed header and JSON claims
	ReasonTooLarge         = "too_large"         // over MaxTokenBytes
	ReasonWrongType        = "wrong_type"        // header typ is not eie+jwt
	ReasonAlgNotAllowed    = "alg_not_allowed"   // alg outside the allow-list, or not the key's alg
	ReasonUnknownKID       = "unknown_kid"       // kid not in the client's key set
	ReasonBadSignature     = "bad_signature"     // signature does not verify with the named key
	ReasonExpired          = "expired"           // exp passed (beyond ClockSkew)
	ReasonNotYetValid      = "not_yet_valid"     // iat or nbf in the future (beyond ClockSkew)
	ReasonLifetimeTooLong  = "lifetime_too_long" // exp-iat above the client's maximum
	ReasonIssuerMismatch   = "issuer_mismatch"   // iss is not the authenticated client
	ReasonAudienceMismatch = "audience_mismatch" // aud does not contain Mandate's issuer
	ReasonClientMismatch   = "client_mismatch"   // agent.client_id is not the authenticated client
	ReasonMissingMember    = "missing_member"    // a required claim is absent or empty
	ReasonBadValue         = "bad_value"         // a claim has a value outside what SPEC §3 allows
	ReasonKeysUnavailable  = "keys_unavailable"  // the client's jwks_uri could not be fetched
)

// Error is a refused envelope. Description is written for the client (it may
// go into error_description) and never contains internal details; the
// underlying cause, if any, is reachable with errors.Unwrap for logs only.
type Error struct {
	Reason      string
	Description string
	// Claims are the envelope's claims when its signature verified and a later check refused
	// it: they are authentic (the client signed them), so Mandate records the identities they
	// name with the refusal (SPEC §8). Nil when the refusal came before or at the signature.
	Claims *Claims
	cause  error
}

func (e *Error) Error() string {
	return "envelope " + e.Reason + ": " + e.Description
}

// Unwrap returns the internal cause (for logs; never show it to clients).
func (e *Error) Unwrap() error { return e.cause }

// ReasonOf returns the reason code of an *Error in err's chain, or "" when
// err is nil or not an envelope error.
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func refuse(reason, description string) *Error {
	return &Error{Reason: reason, Description: description}
}

func refusef(reason string, cause error, format string, args ...any) *Error {
	return &Error{Reason: reason, Description: fmt.Sprintf(format, args...), cause: cause}
}

// ErrUnknownKID is wrapped by KeySet.Key when the set has no key with the
// requested kid.
var ErrUnknownKID = errors.New("envelope: unknown kid")

// ErrKeysUnavailable is wrapped by KeySet.Key when the keys could not be
// obtained at all (for example the jwks_uri did not answer).
var ErrKeysUnavailable = errors.New("envelope: keys unavailable")
