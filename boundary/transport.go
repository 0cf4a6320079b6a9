package boundary

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// ErrURLNotAllowed is a request to a URL outside its audience's base URLs
// (DelegatorConfig.Audiences): it was not sent, and no token was asked for it.
var ErrURLNotAllowed = errors.New("boundary: the URL is not under the audience's base URLs")

// maxRedirects is how many redirects Client follows within an audience's base URLs.
const maxRedirects = 5

// Transport is an http.RoundTripper for calls to one downstream audience. For each
// request it checks the URL is under one of the audience's base URLs (else
// ErrURLNotAllowed, before anything is sent), takes the identity from the request context
// (the tool handler's ctx), gets a token for it from the Delegator, and sends it as the
// bearer token with a traceparent carrying the identity's trace id. A request without an
// identity fails: a tool must not fall back to calling the API as nobody (or as the
// server). In a client of your own, set CheckRedirect to Delegator.CheckRedirect, so a
// redirect out of the base URLs returns its 3xx instead of an error.
type Transport struct {
	Delegator *Delegator
	Audience  string
	// Scopes to request; none means whatever Mandate's policy makes effective.
	Scopes []string
	// Base does the HTTP; default http.DefaultTransport.
	Base http.RoundTripper
}

// Client returns an *http.Client whose requests go through a Transport for audience, and
// that follows at most 5 redirects, only within the audience's base URLs: a redirect
// anywhere else is not followed, and its 3xx answer is returned.
func (d *Delegator) Client(audience string, scopes ...string) *http.Client {
	return &http.Client{
		Transport:     &Transport{Delegator: d, Audience: audience, Scopes: scopes},
		CheckRedirect: d.CheckRedirect(audience),
	}
}

// CheckRedirect is an http.Client CheckRedirect for audience's requests: it follows at most
// 5 redirects while they stay under the audience's base URLs, and otherwise returns the 3xx
// answer unfollowed (http.ErrUseLastResponse).
func (d *Delegator) CheckRedirect(audience string) func(req *http.Request, via []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) > maxRedirects || d.checkURL(audience, req) != nil {
			return http.ErrUseLastResponse
		}
		return nil
	}
}

// parseBases checks and parses DelegatorConfig.Audiences.
func parseBases(audiences map[string][]string) (map[string][]*url.URL, error) {
	out := make(map[string][]*url.URL, len(audiences))
	for aud, list := range audiences {
		for _, raw := range list {
			u, err := url.Parse(raw)
			bad := func(why string) error {
				return fmt.Errorf("boundary: base URL %q of audience %s: %s", raw, aud, why)
			}
			switch {
			case err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "":
				return nil, bad("not an absolute URL with a host")
			case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
				return nil, bad("no user info, query or fragment")
			case u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname())):
				return nil, bad("https only (http on loopback hosts)")
			}
			out[aud] = append(out[aud], u)
		}
	}
	return out, nil
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// checkURL reports whether req may carry audience's token: its URL is under one of the
// audience's base URLs (scheme, host and port equal; path under the base path on a segment
// boundary, with no dot segments a server could resolve out of it), it names no user info,
// and its Host header, if set, is the URL's.
func (d *Delegator) checkURL(audience string, req *http.Request) error {
	u := req.URL
	switch {
	case u == nil || u.User != nil:
		return ErrURLNotAllowed
	case req.Host != "" && !strings.EqualFold(req.Host, u.Host):
		return ErrURLNotAllowed
	}
	for _, seg := range strings.Split(u.Path, "/") {
		if seg == "." || seg == ".." {
			return ErrURLNotAllowed
		}
	}
	for _, b := range d.bases[audience] {
		if strings.EqualFold(u.Scheme, b.Scheme) && strings.EqualFold(u.Hostname(), b.Hostname()) &&
			port(u) == port(b) && underPath(u.Path, b.Path) {
			return nil
		}
	}
	return ErrURLNotAllowed
}

func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// underPath reports whether p is base or below it, on a segment boundary.
func underPath(p, base string) bool {
	base = strings.TrimSuffix(base, "/")
	if p == "" {
		p = "/"
	}
	return base == "" || p == base || strings.HasPrefix(p, base+"/")
}

// RoundTrip implements http.RoundTripper. When the API answers 401 invalid_token (the
// token was revoked, or the API's clock disagrees), the cached token is dropped and the
// request retried once with a fresh exchange — which Mandate refuses if the grant is gone,
// so the caller sees why.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.Delegator.checkURL(t.Audience, req); err != nil {
		closeBody(req)
		return nil, fmt.Errorf("%w: %s", err, redacted(req.URL))
	}
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

// redacted is u for an error message, without user info or query.
func redacted(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	c.User, c.RawQuery, c.Fragment = nil, "", ""
	return c.String()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
