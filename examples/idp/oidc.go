package idp

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// oidcClient is a relying party registered with the demo provider (Mandate's consent pages).
type oidcClient struct {
	secret       string
	redirectURIs []string
}

// authCode is an issued authorization code, good once for a short while.
type authCode struct {
	client, redirectURI, challenge, nonce string
	user                                  User
	expires                               time.Time
}

// RegisterClient registers a relying party: its secret (client_secret_basic or _post) and the
// exact redirect URIs it may use.
func (p *IdP) RegisterClient(id, secret string, redirectURIs ...string) {
	p.mu.Lock()
	p.clients[id] = oidcClient{secret: secret, redirectURIs: redirectURIs}
	p.mu.Unlock()
}

func (p *IdP) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"issuer": p.Issuer, "authorization_endpoint": p.Issuer + "/authorize",
		"token_endpoint": p.Issuer + "/token", "jwks_uri": p.Issuer + "/.well-known/jwks.json",
		"response_types_supported": []string{"code"}, "subject_types_supported": []string{"public"},
		"id_token_signing_alg_values_supported": []string{"ES256"},
		"code_challenge_methods_supported":      []string{"S256"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
		"scopes_supported":                      []string{"openid", "profile"},
		"claims_supported":                      []string{"sub", "name", "preferred_username", "tenant"},
	})
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Demo IdP</title>
<style>body{font:1.05rem/1.5 system-ui,sans-serif;max-width:24rem;margin:2rem auto;padding:0 1rem;color:#16181d}
label{display:block;margin:.75rem 0 .25rem;font-weight:600}input{width:100%;padding:.6rem;font:inherit;border:1px solid #767b85;border-radius:.3rem}
button{margin-top:1rem;width:100%;padding:.7rem;font:inherit;font-weight:600;color:#fff;background:#0b4f99;border:0;border-radius:.3rem}
.err{color:#a4161a}.hint{color:#4a4f59;font-size:.92rem}</style></head>
<body><h1>Demo IdP</h1><p>Sign in to continue to <strong>{{.Client}}</strong>.</p>
{{if .Error}}<p class="err" role="alert">{{.Error}}</p>{{end}}
<form method="post" action="/authorize">
{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{$v}}">{{end}}
<label for="username">Username</label><input id="username" name="username" autocomplete="username" required>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="signin">Sign in</button></form>
<p class="hint">Demo users: alice, bob, carol (tenant acme), dave (globex); password: demo.</p></body></html>`))

// handleAuthorize is the authorization endpoint: GET shows the login form, POST checks it
// and redirects back with a code. Nothing is redirected before the client and its redirect
// URI are known to match (RFC 6749 §4.1.2.1).
func (p *IdP) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8192)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	get := r.Form.Get
	p.mu.Lock()
	c, ok := p.clients[get("client_id")]
	p.mu.Unlock()
	if !ok || !slices.Contains(c.redirectURIs, get("redirect_uri")) {
		http.Error(w, "unknown client or redirect_uri", http.StatusBadRequest)
		return
	}
	back := func(q url.Values) {
		q.Set("state", get("state"))
		http.Redirect(w, r, get("redirect_uri")+"?"+q.Encode(), http.StatusSeeOther)
	}
	switch {
	case get("response_type") != "code":
		back(url.Values{"error": {"unsupported_response_type"}})
		return
	case get("code_challenge") == "" || get("code_challenge_method") != "S256":
		back(url.Values{"error": {"invalid_request"}, "error_description": {"PKCE with S256 is required"}})
		return
	case !slices.Contains(strings.Fields(get("scope")), "openid"):
		back(url.Values{"error": {"invalid_scope"}})
		return
	}
	params := map[string]string{}
	for _, k := range []string{"client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge", "code_challenge_method"} {
		params[k] = get(k)
	}
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	w.Header().Set("Cache-Control", "no-store")
	show := func(msg string) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = loginPage.Execute(w, map[string]any{"Client": get("client_id"), "Params": params, "Error": msg})
	}
	if r.Method == http.MethodGet {
		show("")
		return
	}
	u, ok := Users[r.PostFormValue("username")]
	if !ok || subtle.ConstantTimeCompare([]byte(r.PostFormValue("password")), []byte(Password)) != 1 {
		show("Unknown user or wrong password.")
		return
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	code := base64.RawURLEncoding.EncodeToString(b)
	p.mu.Lock()
	p.codes[code] = authCode{client: get("client_id"), redirectURI: get("redirect_uri"), challenge: get("code_challenge"),
		nonce: get("nonce"), user: u, expires: time.Now().Add(time.Minute)}
	p.mu.Unlock()
	back(url.Values{"code": {code}})
}

// handleCodeToken redeems an authorization code: client authentication, the code once, the
// same redirect URI, and the PKCE verifier; it answers an ID token and an access token.
func (p *IdP) handleCodeToken(w http.ResponseWriter, r *http.Request) {
	fail := func(code string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
	}
	id, secret, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
	}
	p.mu.Lock()
	c, known := p.clients[id]
	ac, found := p.codes[r.PostFormValue("code")]
	delete(p.codes, r.PostFormValue("code"))
	p.mu.Unlock()
	if !known || subtle.ConstantTimeCompare([]byte(secret), []byte(c.secret)) != 1 {
		fail("invalid_client")
		return
	}
	sum := sha256.Sum256([]byte(r.PostFormValue("code_verifier")))
	if !found || ac.client != id || ac.redirectURI != r.PostFormValue("redirect_uri") || time.Now().After(ac.expires) ||
		subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(ac.challenge)) != 1 {
		fail("invalid_grant")
		return
	}
	now := time.Now()
	claims := map[string]any{"iss": p.Issuer, "sub": ac.user.Sub, "aud": id, "iat": now.Unix(),
		"exp": now.Add(5 * time.Minute).Unix(), "tenant": ac.user.Tenant, "name": ac.user.Name,
		"preferred_username": ac.user.Sub}
	if ac.nonce != "" {
		claims["nonce"] = ac.nonce
	}
	idt, err := p.sign(claims, "JWT")
	if err != nil {
		http.Error(w, "signing failed", http.StatusInternalServerError)
		return
	}
	at, err := p.Mint(ac.user, id, 5*time.Minute)
	if err != nil {
		http.Error(w, "signing failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": at, "token_type": "Bearer", "expires_in": 300, "id_token": idt})
}
