package authz

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ory/fosite"

	"github.com/mandatehq/mandate/exchange"
)

// oauthError is an error this package raises itself, already in wire terms.
type oauthError struct {
	code        string
	reason      string // the stable reason code (SPEC §4); derived from code when empty
	description string
	status      int
	retryAfter  time.Duration // sent as Retry-After when set
	cause       error         // for logs only
}

func (e *oauthError) Error() string { return e.code + ": " + e.description }
func (e *oauthError) Unwrap() error { return e.cause }

func invalidRequest(description string) error {
	return &oauthError{code: "invalid_request", description: description, status: http.StatusBadRequest}
}

// descClientAuthFailed is the description of every invalid_client answer (SPEC §10): telling
// an unknown client from a wrong secret, an unknown kid or a bad signature would let anyone
// probe which clients and keys are registered.
const descClientAuthFailed = "client authentication failed"

// invalidClient is a failed client authentication. detail says why, for the log only; cause,
// when not nil, must not quote the credentials (a decoder's error often does).
func invalidClient(detail string, cause error) error {
	why := errors.New(detail)
	if cause != nil {
		why = fmt.Errorf("%s: %w", detail, cause)
	}
	return &oauthError{code: "invalid_client", description: descClientAuthFailed, status: http.StatusUnauthorized, cause: why}
}

// errUnavailable marks a storage fault anywhere below (including inside fosite, which wraps
// whatever GetClient returns in invalid_client): it becomes 503 temporarily_unavailable.
var errUnavailable = errors.New("authz: storage unavailable")

// ErrUnavailable is errUnavailable for callers of AuthenticateBearer.
var ErrUnavailable = errUnavailable

// RetryAfterSeconds is the Retry-After of a 503: storage trouble that a deadline cut short
// (a held lock, a failover) usually clears within seconds, and a client that retries sooner
// only adds to the queue.
const RetryAfterSeconds = "2"

// wireError is an RFC 6749 §5.2 error body with Mandate's reason member (SPEC §4): a stable
// code SDKs act on, the same one the refusal's audit record carries.
type wireError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
	Reason      string `json:"reason"`
	// GrantRequestEndpoint is set on a refusal for lack of a grant that the user could give
	// (SPEC §11): where the client can ask them.
	GrantRequestEndpoint string `json:"grant_request_endpoint,omitempty"`
	userMayConsent       bool
}

// Reason codes of failures decided in this package (exchange has its own for decisions).
const (
	ReasonMalformedRequest     = "malformed_request"
	ReasonRequestTooLarge      = "request_too_large"
	ReasonClientAuthFailed     = "client_authentication_failed"
	ReasonUnsupportedGrantType = "unsupported_grant_type"
	ReasonNotTokenOwner        = "token_not_issued_to_client"
	ReasonInternalError        = exchange.ReasonInternalError
	ReasonRateLimited          = "rate_limited"
)

// defaultReason is the reason of an oauthError raised without one: each error code of this
// package has one cause worth telling apart.
func defaultReason(code string) string {
	switch code {
	case "invalid_client":
		return ReasonClientAuthFailed
	case "unauthorized_client":
		return exchange.ReasonGrantTypeNotAllowed
	case "unsupported_grant_type":
		return ReasonUnsupportedGrantType
	case "server_error":
		return ReasonInternalError
	case "temporarily_unavailable":
		return exchange.ReasonStorageUnavailable
	}
	return ReasonMalformedRequest
}

// writeError is the one place an OAuth error reaches the wire, for every endpoint here. It
// never writes internal text: descriptions come from fixed strings chosen where the error
// was raised; causes go to the log.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	writeErrorFor(w, r, log, err, "")
}

// writeErrorFor is writeError naming issuer's grant request endpoint on refusals the user
// could lift by granting access.
func writeErrorFor(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error, issuer string) {
	status, body := toWire(err)
	if body.userMayConsent && issuer != "" {
		body.GrantRequestEndpoint = issuer + PathGrantRequests
	}
	if status >= 500 {
		log.ErrorContext(r.Context(), "oauth request failed", "path", r.URL.Path, "error", body.Error, "cause", chain(err))
	} else {
		log.DebugContext(r.Context(), "oauth request refused", "path", r.URL.Path, "error", body.Error, "cause", chain(err))
	}
	h := w.Header()
	noStore(h)
	h.Set("Content-Type", "application/json")
	if status == http.StatusUnauthorized && usedBasic(r) {
		h.Set("WWW-Authenticate", `Basic realm="mandate", charset="UTF-8"`)
	}
	var oe *oauthError
	if errors.As(err, &oe) && oe.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(oe.retryAfter.Seconds()))))
	}
	if status == http.StatusServiceUnavailable && h.Get("Retry-After") == "" {
		h.Set("Retry-After", RetryAfterSeconds)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func toWire(err error) (int, wireError) {
	var oe *oauthError
	var xe *exchange.Error
	var fe *fosite.RFC6749Error
	switch {
	case errors.Is(err, errUnavailable):
		return http.StatusServiceUnavailable, wireError{Error: "temporarily_unavailable",
			Description: "the service is temporarily unavailable; retry later", Reason: exchange.ReasonStorageUnavailable}
	case errors.As(err, &oe):
		reason := oe.reason
		if reason == "" {
			reason = defaultReason(oe.code)
		}
		return oe.status, wireError{Error: oe.code, Description: oe.description, Reason: reason}
	case errors.As(err, &xe):
		switch xe.Code {
		case exchange.CodeServerError:
			return http.StatusInternalServerError, wireError{Error: xe.Code, Description: "internal error", Reason: xe.Reason}
		case exchange.CodeTemporarilyUnavailable:
			return http.StatusServiceUnavailable, wireError{Error: xe.Code, Description: xe.Description, Reason: xe.Reason}
		}
		status := http.StatusBadRequest
		if xe.Reason == exchange.ReasonGrantRequestNotFound {
			status = http.StatusNotFound
		}
		return status, wireError{Error: xe.Code, Description: xe.Description, Reason: xe.Reason, userMayConsent: xe.UserMayConsent}
	case errors.As(err, &fe):
		// fosite's descriptions are fixed, generic sentences; its hints and debug text can
		// name internals and are dropped.
		switch fe.ErrorField {
		case "invalid_client", "jti_known":
			return http.StatusUnauthorized, wireError{Error: "invalid_client", Description: descClientAuthFailed, Reason: ReasonClientAuthFailed}
		case "server_error", "misconfiguration", "error":
			return http.StatusInternalServerError, wireError{Error: "server_error", Description: "internal error", Reason: ReasonInternalError}
		}
		status := fe.CodeField
		if status < 400 || status > 599 {
			status = http.StatusBadRequest
		}
		return status, wireError{Error: fe.ErrorField, Description: fe.DescriptionField, Reason: defaultReason(fe.ErrorField)}
	}
	return http.StatusInternalServerError, wireError{Error: "server_error", Description: "internal error", Reason: ReasonInternalError}
}

// noStore marks a response uncacheable (RFC 6749 §5.1, RFC 7662 §2.2).
func noStore(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
}

func usedBasic(r *http.Request) bool {
	a := r.Header.Get("Authorization")
	return len(a) >= 6 && strings.EqualFold(a[:6], "basic ")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	noStore(h)
	h.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// chain spells out err and its causes for the log. The wire types above keep their causes out
// of Error(), so without this a storage fault would be logged as just "invalid_client".
func chain(err error) string {
	var parts []string
	for ; err != nil; err = errors.Unwrap(err) {
		m := err.Error()
		if len(parts) == 0 || !strings.Contains(parts[len(parts)-1], m) {
			parts = append(parts, m)
		}
	}
	return strings.Join(parts, " <- ")
}
