// Package idp is the demo identity provider. It stands in for the company IdP (Okta,
// Entra, Keycloak...) twice over: it signs user access tokens (ES256, RFC 9068 shape) for the
// demo MCP server, and it is a minimal OpenID Connect provider (discovery, an authorization
// endpoint with a login form, authorization code with PKCE, token endpoint, JWKS, ID tokens
// carrying the tenant claim) that Mandate's consent pages sign users in with. Its users and
// their password are fixed; it is for demos and tests only.
package idp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"
)

// User is a demo user.
type User struct {
	Sub    string
	Tenant string
	Name   string
	Scopes []string
}

// Users are the demo users, by login name.
var Users = map[string]User{
	"alice": {Sub: "alice", Tenant: "acme", Name: "Alice Adams", Scopes: []string{"orders:read", "balance:read"}},
	"bob":   {Sub: "bob", Tenant: "acme", Name: "Bob Brown", Scopes: []string{"orders:read", "balance:read"}},
	"carol": {Sub: "carol", Tenant: "acme", Name: "Carol Chen", Scopes: []string{"orders:read", "balance:read"}},
	"dave":  {Sub: "dave", Tenant: "globex", Name: "Dave Diaz", Scopes: []string{"orders:read"}},
}

// Password is every demo user's password at the login form.
const Password = "demo"

// IdP signs tokens with one P-256 key.
type IdP struct {
	Issuer string
	key    *ecdsa.PrivateKey
	kid    string

	mu      sync.Mutex
	clients map[string]oidcClient
	codes   map[string]authCode
}

// New returns an IdP with a fresh key.
func New(issuer string) (*IdP, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &IdP{Issuer: issuer, key: k, kid: "idp-" + hex.EncodeToString(b),
		clients: map[string]oidcClient{}, codes: map[string]authCode{}}, nil
}

// Mint returns an access token for user, for the resource audience (the MCP server).
func (p *IdP) Mint(u User, audience string, ttl time.Duration) (string, error) {
	now := time.Now()
	jti := make([]byte, 12)
	_, _ = rand.Read(jti)
	claims := map[string]any{
		"iss": p.Issuer, "sub": u.Sub, "aud": audience, "tenant": u.Tenant,
		"scope": strings.Join(u.Scopes, " "), "client_id": "demo-chat-app",
		"iat": now.Unix(), "exp": now.Add(ttl).Unix(), "jti": hex.EncodeToString(jti),
	}
	return p.sign(claims, "at+jwt")
}

func (p *IdP) sign(claims map[string]any, typ string) (string, error) {
	h, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": typ, "kid": p.kid})
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	d := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, p.key, d[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// JWKS is the public key set document.
func (p *IdP) JWKS() []byte {
	x := make([]byte, 32)
	y := make([]byte, 32)
	pub, _ := p.key.PublicKey.ECDH() // uncompressed point 0x04 || X || Y
	b := pub.Bytes()
	copy(x, b[1:33])
	copy(y, b[33:65])
	doc, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "kid": p.kid, "alg": "ES256", "use": "sig",
		"x": base64.RawURLEncoding.EncodeToString(x), "y": base64.RawURLEncoding.EncodeToString(y),
	}}})
	return doc
}

// Handler serves GET /.well-known/jwks.json and a demo token endpoint:
// POST /token with form username=<demo user>&resource=<MCP server URL> answers
// {"access_token": ..., "token_type": "Bearer", "expires_in": 900}. No password: demo only.
func (p *IdP) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(p.JWKS())
	})
	mux.HandleFunc("GET /.well-known/openid-configuration", p.handleDiscovery)
	mux.HandleFunc("GET /authorize", p.handleAuthorize)
	mux.HandleFunc("POST /authorize", p.handleAuthorize)
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		if r.PostFormValue("grant_type") == "authorization_code" {
			p.handleCodeToken(w, r)
			return
		}
		u, ok := Users[r.PostFormValue("username")]
		resource := r.PostFormValue("resource")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !ok || resource == "" {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_request", "error_description": "unknown username or no resource"})
			return
		}
		tok, err := p.Mint(u, resource, 15*time.Minute)
		if err != nil {
			http.Error(w, errors.New("signing failed").Error(), http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 900})
	})
	return mux
}
