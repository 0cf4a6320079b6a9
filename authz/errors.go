package authz

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/ory/fosite"

	"github.com/mandatehq/mandate/exchange"
)

// oauthError is an error this package raises itself, already in wire terms.
type oauthError struct {
	code        string
	description string
	status      int
	cause       error // for logs only
}

func (e *oauthError) Error() string { return e.code + ": " + e.description }
func (e *oauthError) Unwrap() error { return e.cause }

func invalidRequest(description string) error {
	return &oauthError{code: "invalid_request", description: description, status: http.StatusBadRequest}
}

func invalidClient(description string, cause error) error {
	return &oauthError{code: "invalid_client", description: description, status: http.StatusUnauthorized, cause: cause}
}

// errUnavailable marks a storage fault anywhere below (including inside fosite, which wraps
// whatever GetClient returns in invalid_client): it becomes 503 temporarily_unavailable.
var errUnavailable = errors.New("authz: storage unavailable")

// ErrUnavailable is errUnavailable for callers of AuthenticateBearer.
var ErrUnavailable = errUnavailable

// wireError is an RFC 6749 §5.2 error body.
type wireError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// writeError is the one place an OAuth error reaches the wire, for every endpoint here. It
// never writes internal text: descriptions come from fixed strings chosen where the error
// was raised; causes go to the log.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	status, body := toWire(err)
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
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func toWire(err error) (int, wireError) {
	var oe *oauthError
	var xe *exchange.Error
	var fe *fosite.RFC6749Error
	switch {
	case errors.Is(err, errUnavailable):
		return http.StatusServiceUnavailable, wireError{"temporarily_unavailable", "the service is temporarily unavailable; retry later"}
	case errors.As(err, &oe):
		return oe.status, wireError{oe.code, oe.description}
	case errors.As(err, &xe):
		switch xe.Code {
		case exchange.CodeServerError:
			return http.StatusInternalServerError, wireError{xe.Code, "internal error"}
		case exchange.CodeTemporarilyUnavailable:
			return http.StatusServiceUnavailable, wireError{xe.Code, xe.Description}
		}
		return http.StatusBadRequest, wireError{xe.Code, xe.Description}
	case errors.As(err, &fe):
		// fosite's descriptions are fixed, generic sentences; its hints and debug text can
		// name internals and are dropped.
		switch fe.ErrorField {
		case "invalid_client", "jti_known":
			return http.StatusUnauthorized, wireError{"invalid_client", "client authentication failed"}
		case "server_error", "misconfiguration", "error":
			return http.StatusInternalServerError, wireError{"server_error", "internal error"}
		}
		status := fe.CodeField
		if status < 400 || status > 599 {
			status = http.StatusBadRequest
		}
		return status, wireError{fe.ErrorField, fe.DescriptionField}
	}
	return http.StatusInternalServerError, wireError{"server_error", "internal error"}
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
