package envelope

import (
	"context"

	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// validClaims is what an MCP server would fill in; the Signer adds the rest.
func validClaims() Claims {
	return Claims{
		Issuer:        testClient,
		Audience:      Audience{testIssuer},
		Actor:         Actor{Type: ActorUser, Sub: "user_123", Tenant: "acme"},
		Agent:         Agent{ID: "agent_456"},
		Session:       Session{ID: "sess_789", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"},
		Authorization: Authorization{Scopes: []string{"orders:read"}, Confidence: ConfidenceVerified},
		Delegation:    Delegation{Mode: ModeOnBehalfOf, Allowed: []string{"orders_api"}},
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	ks := testKeySet(t)
	cases := []struct{ key, kid, alg, wantAlg string }{
		{AlgES256, "es256", "", AlgES256},
		{AlgES384, "es384", "", AlgES384},
		{AlgEdDSA, "eddsa", "", AlgEdDSA},
		{"RSA", "ps256", "", AlgPS256},
		{"RSA", "rs256", AlgRS256, AlgRS256},
	}
	for _, tc := range cases {
		t.Run(tc.wantAlg, func(t *testing.T) {
			s, err := NewSigner(testKey(t, tc.key), tc.kid, tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			s.Now = func() time.Time { return testNow.Add(123 * time.Millisecond) }
			in := validClaims()
			in.Act = &Act{Sub: "upstream_agent", ClientID: "orchestrator"}
			tok, err := s.Sign(in)
			if err != nil {
				t.Fatal(err)
			}
			hdr := decodeSegment(t, tok, 0)
			if len(hdr) != 3 || hdr["alg"] != tc.wantAlg || hdr["typ"] != Type || hdr["kid"] != tc.kid {
				t.Fatalf("header = %v", hdr)
			}
			got, err := testVerifier().Verify(context.Background(), tok, Client{ID: testClient, Keys: ks})
			if err != nil {
				t.Fatal(err)
			}
			if !got.IssuedAt.Equal(testNow) || !got.ExpiresAt.Equal(testNow.Add(60*time.Second)) {
				t.Errorf("iat/exp = %v/%v", got.IssuedAt, got.ExpiresAt)
			}
			if got.Agent.Type != AgentTypeMCP || got.Agent.ClientID != testClient {
				t.Errorf("agent defaults = %+v", got.Agent)
			}
			raw, err := base64.RawURLEncoding.DecodeString(got.JTI)
			if err != nil || len(raw) != 16 {
				t.Errorf("jti %q is not 128 bits of base64url", got.JTI)
			}
			if got.Act.Depth() != 1 || got.Actor != in.Actor || got.Session != in.Session ||
				got.Delegation.Mode != in.Delegation.Mode || got.Authorization.Scopes[0] != "orders:read" {
				t.Errorf("claims changed in transit: %+v", got)
			}
			// aud with one value is a string on the wire.
			if payload := decodeSegment(t, tok, 1); payload["aud"] != testIssuer {
				t.Errorf("aud on the wire = %#v", payload["aud"])
			}
		})
	}
}

func TestSignerJTIIsRandom(t *testing.T) {
	s, err := NewSigner(testKey(t, AlgEdDSA), "eddsa")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 50 {
		tok, err := s.Sign(validClaims())
		if err != nil {
			t.Fatal(err)
		}
		jti := decodeSegment(t, tok, 1)["jti"].(string)
		if seen[jti] {
			t.Fatalf("jti %s repeated", jti)
		}
		seen[jti] = true
	}
}

func TestSignerFromJWK(t *testing.T) {
	priv, err := jwk.Import(testKey(t, AlgES256))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(priv, "es256")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Sign(validClaims())
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Issuer: testIssuer}
	if _, err := v.Verify(context.Background(), tok, Client{ID: testClient, Keys: testKeySet(t)}); err != nil {
		t.Fatal(err)
	}
	pub, _ := jwk.Import(testKey(t, AlgES256).Public())
	if _, err := NewSigner(pub, "x"); err == nil {
		t.Error("a public JWK must not make a signer")
	}
}

func TestNewSignerRefuses(t *testing.T) {
	cases := []struct {
		name string
		key  any
		kid  string
		alg  []string
	}{
		{"no kid", testKey(t, AlgES256), "", nil},
		{"HS256", testKey(t, AlgES256), "k", []string{"HS256"}},
		{"none", testKey(t, AlgES256), "k", []string{"none"}},
		{"ES384 with P-256", testKey(t, AlgES256), "k", []string{AlgES384}},
		{"RS256 with EC", testKey(t, AlgES256), "k", []string{AlgRS256}},
		{"RSA 1024", testKey(t, "RSA1024"), "k", nil},
		{"HMAC secret", []byte("secret"), "k", nil},
		{"two algs", testKey(t, AlgES256), "k", []string{AlgES256, AlgES256}},
	}
	for _, tc := range cases {
		if _, err := NewSigner(tc.key, tc.kid, tc.alg...); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestSignRefuses(t *testing.T) {
	s, err := NewSigner(testKey(t, AlgES256), "es256")
	if err != nil {
		t.Fatal(err)
	}
	s.Now = func() time.Time { return testNow }
	cases := []struct {
		name   string
		mutate func(c *Claims)
		want   string
	}{
		{"no iss", func(c *Claims) { c.Issuer = "" }, ReasonMissingMember},
		{"no aud", func(c *Claims) { c.Audience = nil }, ReasonMissingMember},
		{"empty aud value", func(c *Claims) { c.Audience = Audience{""} }, ReasonBadValue},
		{"agent.client_id not iss", func(c *Claims) { c.Agent.ClientID = "other" }, ReasonClientMismatch},
		{"no actor.sub", func(c *Claims) { c.Actor.Sub = "" }, ReasonMissingMember},
		{"no actor.tenant", func(c *Claims) { c.Actor.Tenant = "" }, ReasonMissingMember},
		{"no agent.id", func(c *Claims) { c.Agent.ID = "" }, ReasonMissingMember},
		{"no session.id", func(c *Claims) { c.Session.ID = "" }, ReasonMissingMember},
		{"no mode", func(c *Claims) { c.Delegation.Mode = "" }, ReasonMissingMember},
		{"bad mode", func(c *Claims) { c.Delegation.Mode = "obo" }, ReasonBadValue},
		{"bad actor type", func(c *Claims) { c.Actor.Type = "bot" }, ReasonBadValue},
		{"service actor on behalf of", func(c *Claims) { c.Actor.Type = ActorService }, ReasonBadValue},
		{"lifetime over 3600 s", func(c *Claims) { c.IssuedAt = testNow; c.ExpiresAt = testNow.Add(3601 * time.Second) }, ReasonLifetimeTooLong},
		{"exp before iat", func(c *Claims) { c.IssuedAt = testNow; c.ExpiresAt = testNow.Add(-time.Second) }, ReasonBadValue},
		{"exp within the same second as iat", func(c *Claims) { c.IssuedAt = testNow; c.ExpiresAt = testNow.Add(500 * time.Millisecond) }, ReasonBadValue},
		{"jti too long", func(c *Claims) { c.JTI = strings.Repeat("j", 129) }, ReasonBadValue},
		{"bad scope", func(c *Claims) { c.Authorization.Scopes = []string{"a b"} }, ReasonBadValue},
		{"act without sub", func(c *Claims) { c.Act = &Act{ClientID: "x"} }, ReasonMissingMember},
		{"over 8 KiB", func(c *Claims) {
			for i := range 700 {
				c.Authorization.Scopes = append(c.Authorization.Scopes, "scope:"+strings.Repeat("s", i%5))
			}
		}, ReasonTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validClaims()
			tc.mutate(&c)
			tok, err := s.Sign(c)
			if ReasonOf(err) != tc.want || tok != "" {
				t.Fatalf("reason = %q, want %q (err %v)", ReasonOf(err), tc.want, err)
			}
		})
	}
	// The largest envelope the signer produces is one Mandate accepts.
	c := validClaims()
	for len(c.Authorization.Scopes) < 2000 {
		c.Authorization.Scopes = append(c.Authorization.Scopes, "s")
		if tok, err := s.Sign(c); err != nil {
			if ReasonOf(err) != ReasonTooLarge {
				t.Fatal(err)
			}
			break
		} else if len(tok) > MaxTokenBytes {
			t.Fatalf("signed a %d-byte envelope", len(tok))
		}
	}
}

func TestClaimsJSON(t *testing.T) {
	c := validClaims()
	c.IssuedAt, c.ExpiresAt = testNow, testNow.Add(time.Minute)
	c.Audience = Audience{"a", "b"}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if _, ok := m["nbf"]; ok {
		t.Error("zero nbf must be absent")
	}
	if m["iat"] != float64(testNow.Unix()) {
		t.Errorf("iat = %v", m["iat"])
	}
	if aud, ok := m["aud"].([]any); !ok || len(aud) != 2 {
		t.Errorf("aud = %v", m["aud"])
	}
	var back Claims
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !back.IssuedAt.Equal(c.IssuedAt) || back.Audience[1] != "b" || back.Actor != c.Actor {
		t.Errorf("round trip: %+v", back)
	}
	deep := `{"sub":"x"}`
	for range maxActDepth {
		deep = `{"sub":"x","act":` + deep + `}`
	}
	if err := json.Unmarshal([]byte(`{"act":`+deep+`}`), &back); err == nil {
		t.Error("act deeper than the decode bound accepted")
	}
}

func decodeSegment(t *testing.T, tok string, i int) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[i])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}
