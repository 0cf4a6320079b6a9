package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/mandatehq/mandate/storage"
)

// Problem type URIs (RFC 9457 "type"), one per kind of answer.
const (
	problemInvalid     = "urn:mandate:problem:invalid-request"
	problemUnauth      = "urn:mandate:problem:unauthorized"
	problemForbidden   = "urn:mandate:problem:forbidden"
	problemNotFound    = "urn:mandate:problem:not-found"
	problemNoMethod    = "urn:mandate:problem:method-not-allowed"
	problemConflict    = "urn:mandate:problem:conflict"
	problemTooLarge    = "urn:mandate:problem:payload-too-large"
	problemMediaType   = "urn:mandate:problem:unsupported-media-type"
	problemInternal    = "urn:mandate:problem:internal"
	problemUnavailable = "urn:mandate:problem:unavailable"
	problemContentType = "application/problem+json"
)

// apiError is an answer decided by the API itself: a status, a detail for the caller and,
// for 400, the invalid fields.
type apiError struct {
	status int
	typ    string
	title  string
	detail string
	fields []FieldError
	header http.Header // extra response headers (WWW-Authenticate)
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.title, e.detail) }

var (
	errNoRoute   = &apiError{status: 404, typ: problemNotFound, title: "Not found", detail: "no such path"}
	errNoMethod  = &apiError{status: 405, typ: problemNoMethod, title: "Method not allowed", detail: "the path does not answer this method"}
	errTooLarge  = &apiError{status: 413, typ: problemTooLarge, title: "Payload too large", detail: fmt.Sprintf("request bodies are limited to %d bytes", maxBodyBytes)}
	errMediaType = &apiError{status: 415, typ: problemMediaType, title: "Unsupported media type", detail: "the body must be application/json"}
	// errNoSecret: a secret was asked of a client that authenticates with keys.
	errNoSecret = &apiError{status: 409, typ: problemConflict, title: "Conflict", detail: "the client uses private_key_jwt and has no secret"}
	// errLastAdmin: the change would leave the store without an enabled admin client.
	errLastAdmin = &apiError{status: 409, typ: problemConflict, title: "Conflict",
		detail: "this is the last enabled client holding " + ScopeAdmin + " with the client_credentials grant: " +
			"deleting or disabling it, or taking that scope or grant type away, would lock every admin out; give another client admin access first"}
	// errAudienceInUse: an audience that active grants name cannot be deleted.
	errAudienceInUse = &apiError{status: 409, typ: problemConflict, title: "Conflict", detail: "active grants name this audience: revoke them first"}
)

// storageErrors maps storage sentinels to answers: the one place they meet the wire.
var storageErrors = []struct {
	err    error
	answer apiError
}{
	{storage.ErrNotFound, apiError{status: 404, typ: problemNotFound, title: "Not found", detail: "no such record"}},
	{storage.ErrConflict, apiError{status: 409, typ: problemConflict, title: "Conflict", detail: "the change conflicts with a stored record"}},
	{storage.ErrBadCursor, apiError{status: 400, typ: problemInvalid, title: "Invalid request", detail: "the request has invalid fields",
		fields: []FieldError{{Field: "cursor", Message: "is not a cursor this list produced"}}}},
	// The store did not answer in time: nothing is known to have changed; retry.
	{storage.ErrUnavailable, apiError{status: 503, typ: problemUnavailable, title: "Service unavailable",
		detail: "the store did not answer in time; retry later", header: http.Header{"Retry-After": {retryAfterSeconds}}}},
}

// retryAfterSeconds is the Retry-After of a 503 (the token endpoint says the same).
const retryAfterSeconds = "2"

// withDetail keeps err (for errors.Is and the table) but tells the caller detail.
type detailed struct {
	err    error
	detail string
}

func (d *detailed) Error() string { return d.err.Error() }
func (d *detailed) Unwrap() error { return d.err }

func withDetail(err error, detail string) error {
	if err == nil {
		return nil
	}
	return &detailed{err: err, detail: detail}
}

// notFoundDetail tells the caller detail when err is storage.ErrNotFound, and leaves every
// other error (a validation answer, a conflict) with its own detail.
func notFoundDetail(err error, detail string) error {
	if errors.Is(err, storage.ErrNotFound) {
		return withDetail(err, detail)
	}
	return err
}

// validation collects invalid fields, so one answer names all of them.
type validation struct{ fields []FieldError }

func (v *validation) add(field, format string, args ...any) {
	v.fields = append(v.fields, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (v *validation) err() error {
	if len(v.fields) == 0 {
		return nil
	}
	return &apiError{status: 400, typ: problemInvalid, title: "Invalid request", detail: "the request has invalid fields", fields: v.fields}
}

func invalidField(field, msg string) error {
	var v validation
	v.add(field, "%s", msg)
	return v.err()
}

// paramError turns a parameter binding error of the generated router into a 400 naming the
// parameter. Validation against the spec runs first, so this is rare.
func paramError(err error) error {
	var (
		inv *InvalidParamFormatError
		req *RequiredParamError
		tmv *TooManyValuesForParamError
	)
	switch {
	case errors.As(err, &inv):
		return invalidField(inv.ParamName, "has an invalid format")
	case errors.As(err, &req):
		return invalidField(req.ParamName, "is required")
	case errors.As(err, &tmv):
		return invalidField(tmv.ParamName, "is given more than once")
	}
	return invalidField("request", "is invalid")
}

// problems writes every error answer of the API.
type problems struct{ log *slog.Logger }

// write answers err as problem+json. Errors it does not know are logged and answered 500
// without their text.
func (p problems) write(w http.ResponseWriter, r *http.Request, err error) {
	answer := p.resolve(r, err)
	for k, vs := range answer.header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	body := Problem{Type: answer.typ, Title: answer.title, Status: answer.status}
	if answer.detail != "" {
		body.Detail = &answer.detail
	}
	if len(answer.fields) > 0 {
		body.Errors = &answer.fields
	}
	w.Header().Set("Content-Type", problemContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(answer.status)
	_ = json.NewEncoder(w).Encode(body)
}

func (p problems) resolve(r *http.Request, err error) apiError {
	var d *detailed
	detail := ""
	if errors.As(err, &d) {
		detail = d.detail
	}
	var ae *apiError
	if errors.As(err, &ae) {
		a := *ae
		if detail != "" {
			a.detail = detail
		}
		return a
	}
	for _, m := range storageErrors {
		if errors.Is(err, m.err) {
			a := m.answer
			if detail != "" {
				a.detail = detail
			}
			if a.status >= 500 {
				p.log.WarnContext(r.Context(), "admin api: store unavailable",
					"method", r.Method, "path", r.URL.Path, "error", err.Error())
			}
			return a
		}
	}
	p.log.ErrorContext(r.Context(), "admin api: internal error",
		"method", r.Method, "path", r.URL.Path, "error", err.Error())
	return apiError{status: 500, typ: problemInternal, title: "Internal server error", detail: "the server could not complete the request"}
}

// recoverPanics turns a handler panic into a logged 500 instead of a dropped connection.
func recoverPanics(p problems, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				p.write(w, r, fmt.Errorf("panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func joinField(parts []string) string { return strings.Join(parts, ".") }
