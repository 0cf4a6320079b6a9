package boundary

import (
	"net/http"
	"strings"
)

// Transport is an http.RoundTripper for calls to one downstream audience. For each
// request it takes the identity from the request context (the tool handler's ctx), gets a
// token for it from the Delegator, and sends it as the bearer token with a traceparent
// carrying the identity's trace id. A request without an identity fails: a tool must not
// fall back to calling the API as nobody (or as the server).
type Transport struct {
	Delegator *Delegator
	Audience  string
	// Scopes to request; none means whatever Mandate's policy makes effective.
	Scopes []string
	// Base does the HTTP; default http.DefaultTransport.
	Base http.RoundTripper
}

// Client returns an *http.Client whose requests go through a Transport for audience.
func (d *Delegator) Client(audience string, scopes ...string) *http.Client {
	return &http.Client{Transport: &Transport{Delegator: d, Audience: audience, Scopes: scopes}}
}

// RoundTrip implements http.RoundTripper. When the API answers 401 invalid_token (the
// token was revoked, or the API's clock disagrees), the cached token is dropped and the
// request retried once with a fresh exchange — which Mandate refuses if the grant is gone,
// so the caller sees why.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	id, ok := FromContext(req.Context())
	if !ok {
		closeBody(req)
		return nil, ErrNoIdentity
	}
	resp, err := t.send(req, id)
	if err != nil || resp.StatusCode != http.StatusUnauthorized ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		return resp, err
	}
	if req.Body != nil && req.GetBody == nil {
		return resp, nil // the body is gone: the caller must retry
	}
	resp.Body.Close()
	t.Delegator.Forget(id, t.Audience, t.Scopes...)
	retry := req.Clone(req.Context())
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	return t.send(retry, id)
}

func (t *Transport) send(req *http.Request, id *Identity) (*http.Response, error) {
	token, err := t.Delegator.Token(req.Context(), id, t.Audience, t.Scopes...)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	// RoundTrippers must not modify the caller's request (net/http's contract).
	out := req.Clone(req.Context())
	out.Header.Set("Authorization", "Bearer "+token)
	if tp := id.Traceparent(); tp != "" {
		out.Header.Set("traceparent", tp)
	}
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(out)
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
