package authz_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/storage"
)

// signAssertion signs claims with priv under kid, with header typ when typ is not "".
func signAssertion(t *testing.T, priv *ecdsa.PrivateKey, kid, typ string, claims map[string]any) string {
	t.Helper()
	payload, _ := json.Marshal(claims)
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, kid)
	if typ != "" {
		_ = hdr.Set(jws.TypeKey, typ)
	}
	tok, err := jws.Sign(payload, jws.WithKey(jwa.ES256(), priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

// SPEC §10: every invalid_client answer carries the same description, whatever the cause, so
// the token endpoint is no oracle for which client ids and kids are registered; the cause
// goes to the log.
func TestInvalidClientSaysTheSameWhateverTheCause(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.addClient(&storage.Client{ID: "jwt-client", TokenEndpointAuthMethod: authz.AuthPrivateKeyJWT,
		GrantTypes: []string{"client_credentials"}, AllowedScopes: []string{"x"}, JWKS: jwksOf(t, priv, "jwt-key")})
	e.addClient(&storage.Client{ID: "disabled", Disabled: true, GrantTypes: []string{"client_credentials"}, AllowedScopes: []string{"x"}})
	now := e.clock.Now()
	claims := func(sub string) map[string]any {
		return map[string]any{"iss": sub, "sub": sub, "aud": e.issuer, "exp": now.Add(time.Minute).Unix(), "jti": storage.NewID("a")}
	}
	cc := func(edit func(url.Values)) url.Values {
		f := url.Values{"grant_type": {"client_credentials"}}
		if edit != nil {
			edit(f)
		}
		return f
	}
	assertion := func(a string) func(url.Values) {
		return func(f url.Values) {
			f.Set("client_assertion_type", authz.AssertionTypeJWTBearer)
			f.Set("client_assertion", a)
		}
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	basic := func(id, pw string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(id, pw) }
	}
	cases := []struct {
		name, logged string
		form         url.Values
		edit         func(*http.Request)
	}{
		{"unknown client", "", cc(nil), basic("nobody", "x")},
		{"wrong secret", "", cc(nil), basic(clientID, "mcs_wrong")},
		{"disabled client", "", cc(nil), basic("disabled", e.secrets["disabled"])},
		{"no authentication", "", cc(nil), nil},
		{"Basic not form-encoded", "", cc(nil), basic(clientID, "%zz")},
		{"two methods", "", cc(func(f url.Values) { f.Set("client_secret", "x") }), basic(clientID, "y")},
		{"assertion type", "", cc(func(f url.Values) {
			f.Set("client_assertion_type", "urn:other")
			f.Set("client_assertion", signAssertion(t, priv, "jwt-key", "", claims("jwt-client")))
		}), nil},
		{"assertion of an unknown client", "", cc(assertion(signAssertion(t, priv, "jwt-key", "", claims("nobody")))), nil},
		{"assertion with an unknown kid", "unknown kid", cc(assertion(signAssertion(t, priv, "no-such-kid", "", claims("jwt-client")))), nil},
		{"assertion with a bad signature", "signature does not verify", cc(assertion(signAssertion(t, other, "jwt-key", "", claims("jwt-client")))), nil},
	}
	want := ""
	for _, tc := range cases {
		r := e.do("/oauth2/token", tc.form, tc.edit)
		if r.status != 401 || r.str("error") != "invalid_client" {
			t.Errorf("%s: got %d %s, want 401 invalid_client", tc.name, r.status, r.raw)
			continue
		}
		d := r.str("error_description")
		if want == "" {
			want = d
		}
		if d != want {
			t.Errorf("%s: error_description %q, want %q like every other invalid_client", tc.name, d, want)
		}
		if tc.logged != "" && !strings.Contains(e.logs.String(), tc.logged) {
			t.Errorf("%s: the log does not say %q", tc.name, tc.logged)
		}
	}
}

// A malformed Basic password is refused without its bytes reaching the log: the URL
// decoder's error quotes the bad escape, a piece of the secret.
func TestMalformedBasicPasswordNotLogged(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	r := e.do("/oauth2/token", url.Values{"grant_type": {"client_credentials"}},
		func(r *http.Request) { r.SetBasicAuth(clientID, "SeCrEt%zQ-tail") })
	wantError(t, r, 401, "invalid_client")
	logs := e.logs.String()
	if logs == "" {
		t.Fatal("nothing was logged; the test cannot see what would be")
	}
	for _, frag := range []string{"%zQ", "zQ", "SeCrEt", "tail"} {
		if strings.Contains(logs, frag) {
			t.Errorf("the log holds %q, a piece of the password:\n%s", frag, logs)
		}
	}
}

// SPEC §10: an envelope is not a client assertion. Both are signed with the client's keys
// and both name the issuer in aud, so without a typ check an envelope that also carried sub
// would authenticate its client.
func TestEnvelopeTypeRefusedAsClientAssertion(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.addClient(&storage.Client{ID: "jwt-client", TokenEndpointAuthMethod: authz.AuthPrivateKeyJWT,
		GrantTypes: []string{"client_credentials"}, AllowedScopes: []string{"x"}, JWKS: jwksOf(t, priv, "jwt-key")})
	now := e.clock.Now()
	form := func(typ string) url.Values {
		return url.Values{"grant_type": {"client_credentials"},
			"client_assertion_type": {authz.AssertionTypeJWTBearer},
			"client_assertion": {signAssertion(t, priv, "jwt-key", typ, map[string]any{
				"iss": "jwt-client", "sub": "jwt-client", "aud": []string{e.issuer},
				"exp": now.Add(time.Minute).Unix(), "iat": now.Unix(), "jti": storage.NewID("a"),
			})}}
	}
	for _, typ := range []string{"eie+jwt", "EIE+JWT", "application/eie+jwt"} {
		wantError(t, e.post("/oauth2/token", "", form(typ)), 401, "invalid_client")
	}
	// The same assertion typed as a JWT, or untyped, authenticates.
	for _, typ := range []string{"", "JWT"} {
		e.wantToken(t, e.post("/oauth2/token", "", form(typ)))
	}
}
