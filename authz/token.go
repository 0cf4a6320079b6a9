package authz

import (
	"context"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ory/fosite"

	"github.com/mandatehq/mandate/exchange"
)

// handleToken is the token endpoint. Its sequence never varies (STYLE rule 5): parse the
// form; fosite authenticates the client and dispatches to the grant handler, which checks
// the client's grant type and the parameters and hands off to exchange (policy, issuance in
// one transaction); then one writer for the answer and one for every failure.
func (s *Server) handleToken() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		att, ok := s.admit(w, r, endpointToken)
		if !ok {
			return
		}
		defer att.Done()
		form, err := parseForm(w, r)
		if err != nil {
			s.refuseUnauthenticated(&att, r, endpointToken, form, err)
			writeError(w, r, s.log, err)
			return
		}
		err = checkAuthParams(form)
		if err != nil {
			s.refuseUnauthenticated(&att, r, endpointToken, form, err)
			writeError(w, r, s.log, err)
			return
		}
		ctx, authed := withAuthNote(r.Context())
		ar, err := s.oauth.NewAccessRequest(ctx, r, &tokenSession{})
		if err != nil {
			if authed.clientID == "" {
				s.refuseUnauthenticated(&att, r, endpointToken, form, err)
			} else {
				s.auditRefusal(r, form, authed.clientID, err)
			}
			writeErrorFor(w, r, s.log, err, s.issuer)
			return
		}
		resp, err := s.oauth.NewAccessResponse(ctx, ar)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		writeTokenResponse(w, resp.ToMap())
	})
}

// respBufs holds buffers for token responses (about 900 bytes); a Write must not retain its
// argument (io.Writer), so a buffer is free again once Write returns.
var respBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// writeTokenResponse writes a token response with the bytes writeJSON would produce, without
// its reflection over the map: the values are strings and integers (fosite's ToMap of what
// populate sets), encoded by hand with the keys sorted as encoding/json sorts them, in one
// Write with its Content-Length. Any other value falls back to writeJSON.
func writeTokenResponse(w http.ResponseWriter, m map[string]any) {
	var keyBuf [8]string
	keys := keyBuf[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	bp := respBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 16<<10 {
			respBufs.Put(bp)
		}
	}()
	b := append((*bp)[:0], '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = exchange.AppendJSONString(b, k)
		b = append(b, ':')
		switch v := m[k].(type) {
		case string:
			b = exchange.AppendJSONString(b, v)
		case int64:
			b = strconv.AppendInt(b, v, 10)
		case int:
			b = strconv.AppendInt(b, int64(v), 10)
		default:
			writeJSON(w, http.StatusOK, m)
			return
		}
	}
	b = append(b, '}', '\n')
	*bp = b
	h := w.Header()
	noStore(h)
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// parseForm reads a form-encoded body of at most 64 KiB into r.PostForm, where fosite looks
// for it, with empty values removed: SPEC §4 counts empty parameters as absent.
//
// It reads the body itself, into a pooled buffer, rather than through r.ParseForm: on the
// token endpoint that read (io.ReadAll growing from 512 bytes, then the string copy and the
// r.Form copy) was a tenth of all bytes allocated per exchange, hence of the GC's work.
func parseForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, invalidRequest("the body must be application/x-www-form-urlencoded")
	}
	form, err := readForm(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		return nil, err
	}
	// r.Form too, so fosite's ParseMultipartForm parses nothing again. It holds the body
	// alone: OAuth parameters travel in the body (RFC 6749 §3.2), and nothing reads the query.
	r.PostForm, r.Form = form, form
	for k, vs := range form {
		if !isText(k) {
			return form, errNotText
		}
		kept := vs[:0]
		for _, v := range vs {
			if !isText(v) {
				return form, errNotText
			}
			if v != "" {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			delete(form, k)
		} else {
			form[k] = kept
		}
	}
	return form, nil
}

// bodyBufs holds read buffers for request bodies; a token request is about 1.5 KB.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

var errBodyTooLarge = &oauthError{code: "invalid_request", reason: ReasonRequestTooLarge,
	description: "the request body is larger than 64 KiB", status: http.StatusRequestEntityTooLarge}

// readForm reads and parses a form body; body enforces the size limit.
func readForm(body io.Reader) (url.Values, error) {
	bp := bodyBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 64<<10 {
			*bp = (*bp)[:0]
			bodyBufs.Put(bp)
		}
	}()
	b := *bp
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, cap(b))
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, errBodyTooLarge
			}
			return nil, invalidRequest("the request body could not be read")
		}
	}
	*bp = b
	form, err := url.ParseQuery(string(b))
	if err != nil {
		return nil, invalidRequest("the request body is not a valid form")
	}
	return form, nil
}

// errNotText comes with the form as parsed, so the refusal can still be audited.
var errNotText = invalidRequest("parameter names and values must be UTF-8 text without NUL characters")

// isText reports whether s is valid UTF-8 without NUL. Anything else cannot be an id, a
// secret or a token, and Postgres refuses NUL in text: left in, it would reach the store (a
// client lookup, a denial's audit record) and turn bad input into a storage fault.
func isText(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// checkAuthParams runs before client authentication, on the parameters it reads: a repeated
// credential is ambiguous, so the request cannot be authenticated at all.
func checkAuthParams(form url.Values) error {
	if err := singletons(form, "grant_type", "client_id", "client_secret", "client_assertion", "client_assertion_type"); err != nil {
		return err
	}
	if !form.Has("grant_type") {
		return invalidRequest("grant_type is required")
	}
	if len(form.Get("client_assertion")) > maxTokenBytes {
		return invalidRequest("client_assertion is larger than 8 KiB")
	}
	return nil
}

func singletons(form url.Values, names ...string) error {
	for _, n := range names {
		if len(form[n]) > 1 {
			return invalidRequest("the " + n + " parameter is repeated")
		}
	}
	return nil
}

// authNote records, for one token request, the client its authentication succeeded for: a
// refusal after that point is that client's (and audited as such), before it nobody's.
type authNote struct{ clientID string }

type authNoteKey struct{}

func withAuthNote(ctx context.Context) (context.Context, *authNote) {
	n := &authNote{}
	return context.WithValue(ctx, authNoteKey{}, n), n
}

func noteAuthenticated(ctx context.Context, clientID string) {
	if n, ok := ctx.Value(authNoteKey{}).(*authNote); ok {
		n.clientID = clientID
	}
}

// tokenSession carries the exchange's result from HandleTokenEndpointRequest to
// PopulateTokenEndpointResponse; fosite's session is the only per-request carrier it offers.
type tokenSession struct {
	fosite.DefaultSession
	result *exchange.Result
}

func sessionOf(ar fosite.AccessRequester) *tokenSession {
	s, _ := ar.GetSession().(*tokenSession)
	return s
}

// remoteAddr is the client's IP for the audit log. fosite puts the request in the context.
func remoteAddr(ctx context.Context) string {
	r, ok := ctx.Value(fosite.RequestContextKey).(*http.Request)
	if !ok {
		return ""
	}
	return hostOf(r.RemoteAddr)
}

func hostOf(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

func authenticated(ar fosite.AccessRequester) *client {
	c, _ := ar.GetClient().(*client)
	return c
}

func unauthorizedClient(description string) error {
	return &oauthError{code: "unauthorized_client", description: description, status: http.StatusBadRequest}
}

// maxTargets bounds audience+resource values: each one is a lookup.
const maxTargets = 16

// tokenExchangeHandler is the RFC 8693 grant as a fosite TokenEndpointHandler (fosite has
// none): it checks what is HTTP-shaped and hands the rest to exchange.Service.
type tokenExchangeHandler struct{ svc *exchange.Service }

func (h *tokenExchangeHandler) CanSkipClientAuth(context.Context, fosite.AccessRequester) bool {
	return false
}

func (h *tokenExchangeHandler) CanHandleTokenEndpointRequest(_ context.Context, ar fosite.AccessRequester) bool {
	return ar.GetGrantTypes().ExactOne(exchange.GrantTypeTokenExchange)
}

func (h *tokenExchangeHandler) HandleTokenEndpointRequest(ctx context.Context, ar fosite.AccessRequester) error {
	if !h.CanHandleTokenEndpointRequest(ctx, ar) {
		return fosite.ErrUnknownRequest
	}
	c := authenticated(ar)
	if c == nil || !c.GetGrantTypes().Has(exchange.GrantTypeTokenExchange) {
		return unauthorizedClient("the client is not allowed to use the token exchange grant")
	}
	form := ar.GetRequestForm()
	if err := singletons(form, "subject_token", "subject_token_type", "scope", "requested_token_type",
		"actor_token", "actor_token_type"); err != nil {
		return err
	}
	switch {
	case form.Has("actor_token") || form.Has("actor_token_type"):
		return invalidRequest("actor_token is not supported")
	case len(form.Get("subject_token")) > maxTokenBytes:
		return &oauthError{code: "invalid_request", reason: exchange.ReasonSubjectTokenTooLarge,
			description: "subject_token is larger than 8 KiB", status: http.StatusBadRequest}
	case len(form["audience"])+len(form["resource"]) > maxTargets:
		return invalidRequest("too many audience and resource values")
	}
	scopes := strings.Fields(form.Get("scope"))
	res, err := h.svc.Exchange(ctx, exchange.Request{
		Client:             c.c,
		SubjectToken:       form.Get("subject_token"),
		SubjectTokenType:   form.Get("subject_token_type"),
		Audiences:          form["audience"],
		Resources:          form["resource"],
		Scopes:             scopes,
		ScopeGiven:         len(scopes) > 0,
		RequestedTokenType: form.Get("requested_token_type"),
		RemoteAddr:         remoteAddr(ctx),
	})
	if err != nil {
		return err
	}
	sessionOf(ar).result = res
	return nil
}

func (h *tokenExchangeHandler) PopulateTokenEndpointResponse(ctx context.Context, ar fosite.AccessRequester, resp fosite.AccessResponder) error {
	if !h.CanHandleTokenEndpointRequest(ctx, ar) {
		return fosite.ErrUnknownRequest
	}
	res := sessionOf(ar).result
	populate(resp, res)
	resp.SetExtra("issued_token_type", res.IssuedTokenType)
	return nil
}

func populate(resp fosite.AccessResponder, res *exchange.Result) {
	resp.SetAccessToken(res.AccessToken)
	resp.SetTokenType("Bearer")
	resp.SetExpiresIn(time.Duration(res.ExpiresIn) * time.Second)
	resp.SetScopes(strings.Fields(res.Scope))
}

// clientCredentialsHandler is RFC 6749 §4.4, also handed to exchange (fosite's own handler
// would issue tokens of its own format and store).
type clientCredentialsHandler struct{ svc *exchange.Service }

func (h *clientCredentialsHandler) CanSkipClientAuth(context.Context, fosite.AccessRequester) bool {
	return false
}

func (h *clientCredentialsHandler) CanHandleTokenEndpointRequest(_ context.Context, ar fosite.AccessRequester) bool {
	return ar.GetGrantTypes().ExactOne(exchange.GrantTypeClientCredentials)
}

func (h *clientCredentialsHandler) HandleTokenEndpointRequest(ctx context.Context, ar fosite.AccessRequester) error {
	if !h.CanHandleTokenEndpointRequest(ctx, ar) {
		return fosite.ErrUnknownRequest
	}
	c := authenticated(ar)
	if c == nil || !c.GetGrantTypes().Has(exchange.GrantTypeClientCredentials) {
		return unauthorizedClient("the client is not allowed to use the client_credentials grant")
	}
	form := ar.GetRequestForm()
	if err := singletons(form, "scope"); err != nil {
		return err
	}
	res, err := h.svc.ClientCredentials(ctx, exchange.ClientCredentialsRequest{
		Client: c.c, Scopes: strings.Fields(form.Get("scope")), RemoteAddr: remoteAddr(ctx),
	})
	if err != nil {
		return err
	}
	sessionOf(ar).result = res
	return nil
}

func (h *clientCredentialsHandler) PopulateTokenEndpointResponse(ctx context.Context, ar fosite.AccessRequester, resp fosite.AccessResponder) error {
	if !h.CanHandleTokenEndpointRequest(ctx, ar) {
		return fosite.ErrUnknownRequest
	}
	populate(resp, sessionOf(ar).result)
	return nil
}

// unsupportedGrantHandler answers every other grant_type with unsupported_grant_type (RFC
// 6749 §5.2), after client authentication like the others; without it fosite would say
// invalid_request without authenticating.
type unsupportedGrantHandler struct{}

func (unsupportedGrantHandler) CanSkipClientAuth(context.Context, fosite.AccessRequester) bool {
	return false
}

func (unsupportedGrantHandler) CanHandleTokenEndpointRequest(_ context.Context, ar fosite.AccessRequester) bool {
	g := ar.GetGrantTypes()
	return !g.ExactOne(exchange.GrantTypeTokenExchange) && !g.ExactOne(exchange.GrantTypeClientCredentials)
}

func (unsupportedGrantHandler) HandleTokenEndpointRequest(context.Context, fosite.AccessRequester) error {
	return &oauthError{code: "unsupported_grant_type", description: "the grant_type is not supported",
		status: http.StatusBadRequest}
}

func (unsupportedGrantHandler) PopulateTokenEndpointResponse(context.Context, fosite.AccessRequester, fosite.AccessResponder) error {
	return fosite.ErrUnknownRequest
}
