package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mandatehq/mandate/storage"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// maxBodyBytes bounds request bodies (SPEC §10).
const maxBodyBytes = 64 << 10

type principalKey struct{}

// principalFrom returns the admin client authenticated for this request.
func principalFrom(ctx context.Context) Principal {
	p, _ := ctx.Value(principalKey{}).(Principal)
	return p
}

type remoteAddrKey struct{}

func remoteAddrFrom(ctx context.Context) string {
	s, _ := ctx.Value(remoteAddrKey{}).(string)
	return s
}

// authenticate checks the bearer token and the scope the method needs: mandate:admin for
// changes, mandate:admin or mandate:admin:read for GET and the POSTs that change nothing
// (readOnlyPosts). It runs before routing and
// validation, so callers without a token learn nothing about the request's shape.
func authenticate(auth Authenticator, p problems, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearerToken(r)
		if !ok {
			p.write(w, r, unauthorized(`Bearer realm="mandate-admin"`, "a bearer token is required"))
			return
		}
		principal, err := auth.AuthenticateBearer(r.Context(), token)
		if errors.Is(err, ErrUnavailable) {
			p.write(w, r, fmt.Errorf("admin api: bearer token: %w", errors.Join(err, storage.ErrUnavailable)))
			return
		}
		if err != nil {
			p.log.InfoContext(r.Context(), "admin api: bearer token rejected", "error", err.Error())
			p.write(w, r, unauthorized(`Bearer realm="mandate-admin", error="invalid_token"`, "the bearer token is not valid"))
			return
		}
		read := r.Method == http.MethodGet || r.Method == http.MethodHead ||
			(r.Method == http.MethodPost && slices.Contains(readOnlyPosts, r.URL.Path))
		allowed := slices.Contains(principal.Scopes, ScopeAdmin) ||
			(read && slices.Contains(principal.Scopes, ScopeAdminRead))
		if !allowed {
			need := ScopeAdmin
			if read {
				need = ScopeAdmin + " or " + ScopeAdminRead
			}
			p.write(w, r, &apiError{status: 403, typ: problemForbidden, title: "Forbidden",
				detail: "this call needs scope " + need,
				header: http.Header{"Www-Authenticate": {`Bearer realm="mandate-admin", error="insufficient_scope", scope="` + ScopeAdmin + `"`}}})
			return
		}
		ctx := context.WithValue(r.Context(), principalKey{}, principal)
		ctx = context.WithValue(ctx, remoteAddrKey{}, r.RemoteAddr)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func unauthorized(challenge, detail string) error {
	return &apiError{status: 401, typ: problemUnauth, title: "Unauthorized", detail: detail,
		header: http.Header{"Www-Authenticate": {challenge}}}
}

// bearerToken reads "Authorization: Bearer <token>" (the scheme is case-insensitive, RFC 7235).
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(h[0], " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

// validator checks requests against the embedded spec.
type validator struct {
	router routers.Router
}

func newValidator(spec []byte) (*validator, error) {
	doc, err := loadSpec(spec)
	if err != nil {
		return nil, err
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &validator{router: router}, nil
}

// loadSpec parses and validates the OpenAPI document, examples included.
func loadSpec(spec []byte) (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(spec)
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation()); err != nil {
		return nil, err
	}
	return doc, nil
}

// findRoute finds the operation for r. The spec's server URL is relative (/admin/v1), so the
// lookup uses the path alone.
func (v *validator) findRoute(r *http.Request) (*routers.Route, map[string]string, error) {
	probe := r.Clone(r.Context())
	probe.URL.Scheme, probe.URL.Host, probe.URL.User = "", "", nil
	probe.Host = ""
	return v.router.FindRoute(probe)
}

// validateRequests answers 404/405 for what the spec does not have, 413 for bodies over
// maxBodyBytes, 415 for bodies that are not JSON, and 400 naming every invalid field for
// anything else the spec does not allow.
func validateRequests(v *validator, p problems, next http.Handler) http.Handler {
	opts := &openapi3filter.Options{
		MultiError:          true,
		AuthenticationFunc:  openapi3filter.NoopAuthenticationFunc, // done by authenticate
		SkipSettingDefaults: true,                                  // handlers apply defaults
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route, params, err := v.findRoute(r)
		if err != nil {
			// The router answers a fresh RouteError whose reason names the case.
			var re *routers.RouteError
			if errors.As(err, &re) && re.Reason == routers.ErrMethodNotAllowed.Error() {
				p.write(w, r, errNoMethod)
				return
			}
			p.write(w, r, errNoRoute)
			return
		}
		var body []byte
		if route.Operation.RequestBody != nil {
			if r.ContentLength > maxBodyBytes {
				p.write(w, r, errTooLarge)
				return
			}
			var err error
			body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
			if err != nil {
				var tooLarge *http.MaxBytesError
				if errors.As(err, &tooLarge) {
					p.write(w, r, errTooLarge)
					return
				}
				p.write(w, r, invalidField("body", "could not be read"))
				return
			}
			if len(body) > 0 && !isJSON(r.Header.Get("Content-Type")) {
				p.write(w, r, errMediaType)
				return
			}
		}
		// A call without a request body in the spec ignores whatever came, unread, so that
		// its answers stay the ones the spec lists for it.
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		if len(body) == 0 {
			// An optional body may be left out whatever the Content-Type says.
			r.Header.Del("Content-Type")
		}
		in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route, Options: opts}
		if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
			var ve validation
			ve.fields = requestFieldErrors(err)
			p.write(w, r, ve.err())
			return
		}
		if fields := textErrors(r.URL.Query(), body); len(fields) > 0 {
			p.write(w, r, (&validation{fields: fields}).err())
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

// textErrors names the query parameters and body members the schema lets through but no
// store keeps: NUL characters and invalid UTF-8 (Postgres rejects both, which would be a
// 500), and data after the body's JSON value (which the decoder would silently drop).
func textErrors(query url.Values, body []byte) []FieldError {
	const msg = "must be UTF-8 text without NUL characters"
	var out []FieldError
	names := make([]string, 0, len(query))
	for name := range query {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		for _, v := range query[name] {
			if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
				out = append(out, FieldError{Field: name, Message: msg})
				break
			}
		}
	}
	if len(body) == 0 {
		return out
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return append(out, FieldError{Field: "body", Message: "is not valid JSON"})
	}
	if _, err := dec.Token(); err != io.EOF {
		out = append(out, FieldError{Field: "body", Message: "has data after the JSON value"})
	}
	var walk func(v any, field string)
	walk = func(v any, field string) {
		switch x := v.(type) {
		case string:
			if strings.ContainsRune(x, 0) {
				out = append(out, FieldError{Field: orBody(field), Message: msg})
			}
		case []any:
			for i, e := range x {
				walk(e, joinNonEmpty(field, strconv.Itoa(i)))
			}
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				if strings.ContainsRune(k, 0) {
					out = append(out, FieldError{Field: orBody(field), Message: "has a member name with a NUL character"})
					continue
				}
				walk(x[k], joinNonEmpty(field, k))
			}
		}
	}
	walk(v, "")
	return out
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

// requestFieldErrors lists the fields a kin-openapi validation error names. Messages are the
// validator's reasons, which never quote the rejected value.
func requestFieldErrors(err error) []FieldError {
	var out []FieldError
	var walk func(err error, field string)
	walk = func(err error, field string) {
		// A type switch, not errors.As: As would see through a RequestError to its inner
		// errors and lose the parameter name it carries.
		switch e := err.(type) {
		case openapi3.MultiError:
			for _, inner := range e {
				walk(inner, field)
			}
		case *openapi3filter.RequestError:
			if e.Parameter != nil {
				field = e.Parameter.Name
			}
			switch {
			case e.Err == nil:
				out = append(out, FieldError{Field: orBody(field), Message: e.Reason})
			case errors.Is(e.Err, openapi3filter.ErrInvalidRequired), errors.Is(e.Err, openapi3filter.ErrInvalidEmptyValue):
				out = append(out, FieldError{Field: orBody(field), Message: "is required"})
			default:
				walk(e.Err, field)
			}
		case *openapi3.SchemaError:
			f := field
			if ptr := e.JSONPointer(); len(ptr) > 0 {
				if f == "" {
					f = joinField(ptr)
				} else {
					f += "." + joinField(ptr)
				}
			}
			msg := e.Reason
			switch e.SchemaField {
			case "properties", "additionalProperties":
				// Name the unknown member itself rather than the object holding it.
				if m := unknownMember.FindStringSubmatch(e.Reason); m != nil {
					f, msg = joinNonEmpty(f, m[1]), "is not a known member"
				}
			case "format":
				if e.Schema != nil && e.Schema.Format == "date-time" {
					msg = "must be an RFC 3339 date-time"
				}
			}
			out = append(out, FieldError{Field: orBody(f), Message: msg})
		case *openapi3filter.ParseError:
			out = append(out, FieldError{Field: orBody(field), Message: "could not be parsed"})
		default:
			out = append(out, FieldError{Field: orBody(field), Message: "is invalid"})
		}
	}
	walk(err, "")
	if len(out) == 0 {
		out = append(out, FieldError{Field: "request", Message: "is invalid"})
	}
	return out
}

var unknownMember = regexp.MustCompile(`^property "(.*)" is unsupported$`)

func joinNonEmpty(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

func orBody(field string) string {
	if field == "" {
		return "body"
	}
	return field
}
