package envelope

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

func testKeySet(t testing.TB) *StaticKeySet {
	t.Helper()
	rsaKey := testKey(t, "RSA")
	ks, err := NewStaticKeySet(jwksJSON(t,
		publicJWK(t, testKey(t, AlgES256), "es256", AlgES256),
		publicJWK(t, testKey(t, AlgES384), "es384", AlgES384),
		publicJWK(t, testKey(t, AlgEdDSA), "eddsa", ""),
		publicJWK(t, rsaKey, "ps256", AlgPS256),
		publicJWK(t, rsaKey, "rs256", AlgRS256),
		publicJWK(t, rsaKey, "rsa-noalg", ""),
	))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func testVerifier() *Verifier {
	return &Verifier{Issuer: testIssuer, Now: func() time.Time { return testNow }}
}

// failingKeySet stands in for a key server that is down.
type failingKeySet struct{}

func (failingKeySet) Key(context.Context, string) (jwk.Key, error) {
	return nil, fmt.Errorf("%w: connection refused", ErrKeysUnavailable)
}

func TestVerify(t *testing.T) {
	ks := testKeySet(t)
	es256 := testKey(t, AlgES256)
	attacker := testKey(t, "ES256-attacker")
	rsaKey := testKey(t, "RSA")

	// sign builds an ES256 envelope from base claims changed by mutate.
	sign := func(mutate func(c map[string]any)) func(t *testing.T) string {
		return func(t *testing.T) string {
			c := baseClaims()
			if mutate != nil {
				mutate(c)
			}
			return rawToken(t, es256, AlgES256, baseHeader(AlgES256, "es256"), c)
		}
	}
	// signHeader builds an ES256 envelope with a changed header.
	signHeader := func(mutate func(h map[string]any)) func(t *testing.T) string {
		return func(t *testing.T) string {
			h := baseHeader(AlgES256, "es256")
			mutate(h)
			return rawToken(t, es256, AlgES256, h, baseClaims())
		}
	}
	withAlg := func(alg, keyName, kid string) func(t *testing.T) string {
		return func(t *testing.T) string {
			return rawToken(t, testKey(t, keyName), alg, baseHeader(alg, kid), baseClaims())
		}
	}
	attackerJWK, err := json.Marshal(publicJWK(t, attacker, "es256", AlgES256))
	if err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) int64 { return testNow.Add(d).Unix() }

	cases := []struct {
		name   string
		token  func(t *testing.T) string
		client func(c *Client)
		want   string // reason; "" means accepted
		check  func(t *testing.T, c *Claims)
	}{
		// Accepted, one per allowed algorithm.
		{name: "ES256 valid", token: sign(nil), check: func(t *testing.T, c *Claims) {
			if c.Actor.Sub != "user_123" || c.Agent.ID != "agent_456" || c.Session.TraceID == "" ||
				c.Delegation.Mode != ModeOnBehalfOf || len(c.Authorization.Scopes) != 2 ||
				!c.ExpiresAt.Equal(testNow.Add(time.Minute)) || !c.NotBefore.IsZero() {
				t.Errorf("claims decoded wrongly: %+v", c)
			}
		}},
		{name: "ES384 valid", token: withAlg(AlgES384, AlgES384, "es384")},
		{name: "EdDSA valid", token: withAlg(AlgEdDSA, AlgEdDSA, "eddsa")},
		{name: "PS256 valid", token: withAlg(AlgPS256, "RSA", "ps256")},
		{name: "RS256 valid", token: withAlg(AlgRS256, "RSA", "rs256")},
		{name: "RS256 on key without alg", token: withAlg(AlgRS256, "RSA", "rsa-noalg")},
		{name: "aud array containing issuer", token: sign(func(c map[string]any) {
			c["aud"] = []any{"https://other.example", testIssuer}
		}), check: func(t *testing.T, c *Claims) {
			if len(c.Audience) != 2 {
				t.Errorf("aud = %v", c.Audience)
			}
		}},
		{name: "typ compared case-insensitively", token: signHeader(func(h map[string]any) { h["typ"] = "EIE+JWT" })},
		{name: "typ with application/ prefix", token: signHeader(func(h map[string]any) { h["typ"] = "application/eie+jwt" })},
		{name: "unknown claims ignored", token: sign(func(c map[string]any) {
			c["meta"] = map[string]any{"anything": true}
			sub(c, "actor")["extra"] = 1
		})},
		{name: "act chain decoded", token: sign(func(c map[string]any) {
			c["act"] = map[string]any{"sub": "agent_a", "client_id": "c1", "act": map[string]any{"sub": "agent_b"}}
		}), check: func(t *testing.T, c *Claims) {
			if c.Act.Depth() != 2 || c.Act.Act.Sub != "agent_b" {
				t.Errorf("act = %+v", c.Act)
			}
		}},
		{name: "no delegation.allowed and no scopes", token: sign(func(c map[string]any) {
			delete(sub(c, "delegation"), "allowed")
			delete(c, "authorization")
		})},
		{name: "service actor in service_identity", token: sign(func(c map[string]any) {
			sub(c, "actor")["type"] = "service"
			sub(c, "delegation")["mode"] = "service_identity"
		})},
		{name: "fractional NumericDate", token: sign(func(c map[string]any) { c["iat"] = float64(testNow.Unix()) + 0.5 })},

		// Size and shape.
		{name: "oversize token", token: func(t *testing.T) string { return strings.Repeat("a", MaxTokenBytes+1) }, want: ReasonTooLarge},
		{name: "oversize but validly signed", token: sign(func(c map[string]any) { c["pad"] = strings.Repeat("x", 6200) }), want: ReasonTooLarge},
		{name: "two segments", token: func(t *testing.T) string { return b64(`{"alg":"ES256"}`) + "." + b64(`{}`) }, want: ReasonBadFormat},
		{name: "four segments", token: func(t *testing.T) string { return sign(nil)(t) + ".x" }, want: ReasonBadFormat},
		{name: "empty", token: func(t *testing.T) string { return "" }, want: ReasonBadFormat},
		{name: "empty signature", token: func(t *testing.T) string {
			tok := sign(nil)(t)
			return tok[:strings.LastIndexByte(tok, '.')+1]
		}, want: ReasonBadFormat},
		{name: "bad base64 header", token: func(t *testing.T) string { return "!!!." + b64("{}") + ".AAAA" }, want: ReasonBadFormat},
		{name: "padded base64 header", token: func(t *testing.T) string {
			return base64.URLEncoding.EncodeToString([]byte(`{"alg":"ES256","typ":"eie+jwt","kid":"es256" }`)) + "." + b64("{}") + ".AAAA"
		}, want: ReasonBadFormat},
		{name: "newline in signature", token: func(t *testing.T) string {
			tok := sign(nil)(t)
			return tok[:len(tok)-10] + "\n" + tok[len(tok)-10:]
		}, want: ReasonBadFormat},
		{name: "act nested too deep", token: sign(func(c map[string]any) {
			act := map[string]any{"sub": "a0"}
			for i := range maxActDepth {
				act = map[string]any{"sub": fmt.Sprint("a", i+1), "act": act}
			}
			c["act"] = act
		}), want: ReasonBadFormat},
		{name: "header not JSON", token: func(t *testing.T) string { return b64("not json") + "." + b64("{}") + ".AAAA" }, want: ReasonBadFormat},
		{name: "header JSON array", token: func(t *testing.T) string { return b64(`["ES256"]`) + "." + b64("{}") + ".AAAA" }, want: ReasonBadFormat},
		{name: "bad base64 signature", token: func(t *testing.T) string {
			tok := sign(nil)(t)
			return tok[:strings.LastIndexByte(tok, '.')+1] + "***"
		}, want: ReasonBadFormat},
		{name: "payload not JSON", token: func(t *testing.T) string {
			return rawToken(t, es256, AlgES256, baseHeader(AlgES256, "es256"), []byte("hello"))
		}, want: ReasonBadFormat},
		{name: "iat as string", token: sign(func(c map[string]any) { c["iat"] = fmt.Sprint(testNow.Unix()) }), want: ReasonBadFormat},
		{name: "aud as number", token: sign(func(c map[string]any) { c["aud"] = 7 }), want: ReasonBadFormat},
		{name: "scopes as string", token: sign(func(c map[string]any) { sub(c, "authorization")["scopes"] = "orders:read" }), want: ReasonBadFormat},
		{name: "negative exp", token: sign(func(c map[string]any) { c["exp"] = -1 }), want: ReasonBadFormat},
		{name: "crit header", token: signHeader(func(h map[string]any) { h["crit"] = []any{"exp"}; h["exp"] = 1 }), want: ReasonBadFormat},
		{name: "b64 header", token: signHeader(func(h map[string]any) { h["b64"] = false }), want: ReasonBadFormat},
		{name: "missing kid", token: signHeader(func(h map[string]any) { delete(h, "kid") }), want: ReasonBadFormat},

		// Header type and algorithm.
		{name: "typ JWT", token: signHeader(func(h map[string]any) { h["typ"] = "JWT" }), want: ReasonWrongType},
		{name: "typ at+jwt", token: signHeader(func(h map[string]any) { h["typ"] = "at+jwt" }), want: ReasonWrongType},
		{name: "typ missing", token: signHeader(func(h map[string]any) { delete(h, "typ") }), want: ReasonWrongType},
		{name: "alg none", token: func(t *testing.T) string {
			return b64(`{"alg":"none","typ":"eie+jwt","kid":"es256"}`) + "." + b64(`{"iss":"webapp-prod"}`) + ".AAAA"
		}, want: ReasonAlgNotAllowed},
		{name: "alg None", token: func(t *testing.T) string {
			return b64(`{"alg":"None","typ":"eie+jwt","kid":"es256"}`) + "." + b64(`{}`) + ".AAAA"
		}, want: ReasonAlgNotAllowed},
		{name: "HS256 keyed with the client's public key", token: func(t *testing.T) string {
			// The classic confusion attack: HMAC over the input with the
			// public key's bytes as the secret.
			pub, _ := json.Marshal(publicJWK(t, rsaKey, "rsa-noalg", ""))
			input := b64(`{"alg":"HS256","typ":"eie+jwt","kid":"rsa-noalg"}`) + "." + b64(mustJSON(t, baseClaims()))
			m := hmac.New(sha256.New, pub)
			m.Write([]byte(input))
			return input + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
		}, want: ReasonAlgNotAllowed},
		{name: "ES512 not allowed", token: signHeader(func(h map[string]any) { h["alg"] = "ES512" }), want: ReasonAlgNotAllowed},
		{name: "lower-case es256 not allowed", token: signHeader(func(h map[string]any) { h["alg"] = "es256" }), want: ReasonAlgNotAllowed},
		{name: "header alg differs from key alg", token: func(t *testing.T) string {
			return rawToken(t, rsaKey, AlgRS256, baseHeader(AlgRS256, "ps256"), baseClaims())
		}, want: ReasonAlgNotAllowed},
		{name: "alg does not fit key type", token: func(t *testing.T) string {
			return rawToken(t, rsaKey, AlgRS256, baseHeader(AlgRS256, "eddsa"), baseClaims())
		}, want: ReasonAlgNotAllowed},

		// Keys.
		{name: "unknown kid", token: signHeader(func(h map[string]any) { h["kid"] = "nope" }), want: ReasonUnknownKID},
		{name: "header jwk with attacker kid is ignored", token: func(t *testing.T) string {
			h := baseHeader(AlgES256, "attacker")
			h["jwk"] = json.RawMessage(attackerJWK)
			return rawToken(t, attacker, AlgES256, h, baseClaims())
		}, want: ReasonUnknownKID},
		{name: "header jwk and jku with victim kid is ignored", token: func(t *testing.T) string {
			h := baseHeader(AlgES256, "es256")
			h["jwk"] = json.RawMessage(attackerJWK)
			h["jku"] = "https://attacker.example/jwks.json"
			h["x5u"] = "https://attacker.example/cert.pem"
			return rawToken(t, attacker, AlgES256, h, baseClaims())
		}, want: ReasonBadSignature},
		{name: "no key set", token: sign(nil), client: func(c *Client) { c.Keys = nil }, want: ReasonUnknownKID},
		{name: "key server down", token: sign(nil), client: func(c *Client) { c.Keys = failingKeySet{} }, want: ReasonKeysUnavailable},

		// Signature.
		{name: "tampered payload", token: func(t *testing.T) string {
			parts := strings.Split(sign(nil)(t), ".")
			c := baseClaims()
			sub(c, "actor")["sub"] = "admin"
			return parts[0] + "." + b64(mustJSON(t, c)) + "." + parts[2]
		}, want: ReasonBadSignature},
		{name: "signature one byte short", token: func(t *testing.T) string {
			tok := sign(nil)(t)
			i := strings.LastIndexByte(tok, '.')
			sig, _ := base64.RawURLEncoding.DecodeString(tok[i+1:])
			return tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig[:len(sig)-1])
		}, want: ReasonBadSignature},
		{name: "EdDSA signed by another key", token: func(t *testing.T) string {
			return rawToken(t, es256, AlgES256, baseHeader(AlgES256, "es384"), baseClaims())
		}, want: ReasonAlgNotAllowed},

		// Identity.
		{name: "issuer mismatch", token: sign(func(c map[string]any) { c["iss"] = "other-client" }), want: ReasonIssuerMismatch},
		{name: "authenticated as another client", token: sign(nil), client: func(c *Client) { c.ID = "other-client" }, want: ReasonIssuerMismatch},
		{name: "agent.client_id mismatch", token: sign(func(c map[string]any) { sub(c, "agent")["client_id"] = "other" }), want: ReasonClientMismatch},
		{name: "aud is another server", token: sign(func(c map[string]any) { c["aud"] = "https://evil.example" }), want: ReasonAudienceMismatch},
		{name: "aud with trailing slash", token: sign(func(c map[string]any) { c["aud"] = testIssuer + "/" }), want: ReasonAudienceMismatch},
		{name: "aud array without issuer", token: sign(func(c map[string]any) { c["aud"] = []any{"a", "b"} }), want: ReasonAudienceMismatch},

		// Time, with the 60 s skew edges.
		{name: "expired beyond skew", token: sign(func(c map[string]any) { c["iat"] = at(-120 * time.Second); c["exp"] = at(-61 * time.Second) }), want: ReasonExpired},
		{name: "expired exactly at skew", token: sign(func(c map[string]any) { c["iat"] = at(-120 * time.Second); c["exp"] = at(-60 * time.Second) }), want: ReasonExpired},
		{name: "expired within skew", token: sign(func(c map[string]any) { c["iat"] = at(-120 * time.Second); c["exp"] = at(-59 * time.Second) })},
		{name: "iat beyond skew", token: sign(func(c map[string]any) { c["iat"] = at(61 * time.Second); c["exp"] = at(120 * time.Second) }), want: ReasonNotYetValid},
		{name: "iat at skew", token: sign(func(c map[string]any) { c["iat"] = at(60 * time.Second); c["exp"] = at(120 * time.Second) })},
		{name: "nbf beyond skew", token: sign(func(c map[string]any) { c["nbf"] = at(61 * time.Second) }), want: ReasonNotYetValid},
		{name: "nbf within skew", token: sign(func(c map[string]any) { c["nbf"] = at(59 * time.Second) }), check: func(t *testing.T, c *Claims) {
			if !c.NotBefore.Equal(testNow.Add(59 * time.Second)) {
				t.Errorf("nbf = %v", c.NotBefore)
			}
		}},
		{name: "lifetime over default", token: sign(func(c map[string]any) { c["exp"] = at(301 * time.Second) }), want: ReasonLifetimeTooLong},
		{name: "lifetime at default", token: sign(func(c map[string]any) { c["exp"] = at(300 * time.Second) })},
		{name: "lifetime within client maximum", token: sign(func(c map[string]any) { c["exp"] = at(600 * time.Second) }),
			client: func(c *Client) { c.MaxLifetime = 10 * time.Minute }},
		{name: "client maximum capped at ceiling", token: sign(func(c map[string]any) { c["exp"] = at(3601 * time.Second) }),
			client: func(c *Client) { c.MaxLifetime = 2 * time.Hour }, want: ReasonLifetimeTooLong},
		{name: "exp equals iat", token: sign(func(c map[string]any) { c["exp"] = c["iat"] }), want: ReasonBadValue},

		// Required members and values.
		{name: "missing iss", token: sign(func(c map[string]any) { delete(c, "iss") }), want: ReasonMissingMember},
		{name: "missing aud", token: sign(func(c map[string]any) { delete(c, "aud") }), want: ReasonMissingMember},
		{name: "null aud", token: sign(func(c map[string]any) { c["aud"] = nil }), want: ReasonMissingMember},
		{name: "missing exp", token: sign(func(c map[string]any) { delete(c, "exp") }), want: ReasonMissingMember},
		{name: "missing iat", token: sign(func(c map[string]any) { delete(c, "iat") }), want: ReasonMissingMember},
		{name: "missing jti", token: sign(func(c map[string]any) { delete(c, "jti") }), want: ReasonMissingMember},
		{name: "missing agent.client_id", token: sign(func(c map[string]any) { delete(sub(c, "agent"), "client_id") }), want: ReasonMissingMember},
		{name: "missing actor", token: sign(func(c map[string]any) { delete(c, "actor") }), want: ReasonMissingMember},
		{name: "missing actor.tenant", token: sign(func(c map[string]any) { delete(sub(c, "actor"), "tenant") }), want: ReasonMissingMember},
		{name: "missing agent.id", token: sign(func(c map[string]any) { delete(sub(c, "agent"), "id") }), want: ReasonMissingMember},
		{name: "missing session", token: sign(func(c map[string]any) { delete(c, "session") }), want: ReasonMissingMember},
		{name: "missing delegation.mode", token: sign(func(c map[string]any) { delete(sub(c, "delegation"), "mode") }), want: ReasonMissingMember},
		{name: "act without sub", token: sign(func(c map[string]any) { c["act"] = map[string]any{"client_id": "x"} }), want: ReasonMissingMember},
		{name: "jti of 128 characters", token: sign(func(c map[string]any) { c["jti"] = strings.Repeat("é", 128) })},
		{name: "jti of 129 characters", token: sign(func(c map[string]any) { c["jti"] = strings.Repeat("j", 129) }), want: ReasonBadValue},
		{name: "NUL in actor.sub", token: sign(func(c map[string]any) { sub(c, "actor")["sub"] = "user\x00123" }), want: ReasonBadValue},
		{name: "newline in session.trace_id", token: sign(func(c map[string]any) { sub(c, "session")["trace_id"] = "t\nforged log line" }), want: ReasonBadValue},
		{name: "DEL in agent.id", token: sign(func(c map[string]any) { sub(c, "agent")["id"] = "agent\x7f" }), want: ReasonBadValue},
		{name: "actor.type robot", token: sign(func(c map[string]any) { sub(c, "actor")["type"] = "robot" }), want: ReasonBadValue},
		{name: "mode impersonate", token: sign(func(c map[string]any) { sub(c, "delegation")["mode"] = "impersonate" }), want: ReasonBadValue},
		{name: "service actor on behalf of", token: sign(func(c map[string]any) { sub(c, "actor")["type"] = "service" }), want: ReasonBadValue},
		{name: "confidence unknown", token: sign(func(c map[string]any) { sub(c, "authorization")["confidence"] = "certain" }), want: ReasonBadValue},
		{name: "scope with a space", token: sign(func(c map[string]any) { sub(c, "authorization")["scopes"] = []any{"orders:read admin"} }), want: ReasonBadValue},
		{name: "empty allowed entry", token: sign(func(c map[string]any) { sub(c, "delegation")["allowed"] = []any{""} }), want: ReasonBadValue},
	}

	v := testVerifier()
	seen := map[string]bool{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client := Client{ID: testClient, Keys: ks}
			if tc.client != nil {
				tc.client(&client)
			}
			token := tc.token(t)
			claims, err := v.Verify(context.Background(), token, client)
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason = %q, want %q (err: %v)", got, tc.want, err)
			}
			checkUnsignedAgrees(t, v, token, client, claims, err)
			if tc.want != "" {
				var e *Error
				if !errors.As(err, &e) || e.Description == "" || claims != nil {
					t.Fatalf("refusal must be an *Error with a description and no claims: %v, %v", err, claims)
				}
				return
			}
			if claims == nil {
				t.Fatal("accepted without claims")
			}
			if tc.check != nil {
				tc.check(t, claims)
			}
		})
		seen[tc.want] = true
	}
	for _, r := range []string{ReasonBadFormat, ReasonTooLarge, ReasonWrongType, ReasonAlgNotAllowed,
		ReasonUnknownKID, ReasonBadSignature, ReasonExpired, ReasonNotYetValid, ReasonLifetimeTooLong,
		ReasonIssuerMismatch, ReasonAudienceMismatch, ReasonClientMismatch, ReasonMissingMember,
		ReasonBadValue, ReasonKeysUnavailable} {
		if !seen[r] {
			t.Errorf("no case covers reason %s", r)
		}
	}
}

// checkUnsignedAgrees: where Verify got past the signature (it accepted the envelope, or
// refused its claims), CheckUnsignedClaims on the same payload, unsigned, says the same.
func checkUnsignedAgrees(t *testing.T, v *Verifier, token string, c Client, claims *Claims, err error) {
	t.Helper()
	var e *Error
	if err != nil && (!errors.As(err, &e) || e.Claims == nil) {
		return // refused at or before the signature: a what-if has no signature to check
	}
	parts := strings.Split(token, ".")
	payload, derr := base64.RawURLEncoding.DecodeString(parts[1])
	if derr != nil {
		t.Fatal(derr)
	}
	got, uerr := v.CheckUnsignedClaims(payload, Client{ID: c.ID, MaxLifetime: c.MaxLifetime})
	if ReasonOf(uerr) != ReasonOf(err) {
		t.Fatalf("CheckUnsignedClaims: reason %q, Verify %q", ReasonOf(uerr), ReasonOf(err))
	}
	if err == nil && !reflect.DeepEqual(got, claims) {
		t.Fatalf("CheckUnsignedClaims: claims %+v, Verify %+v", got, claims)
	}
	var ue *Error
	if uerr != nil && (!errors.As(uerr, &ue) || !reflect.DeepEqual(ue.Claims, e.Claims)) {
		t.Fatalf("CheckUnsignedClaims refused without the claims Verify kept")
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestVerifyRequiresIssuer(t *testing.T) {
	ks := testKeySet(t)
	tok := rawToken(t, testKey(t, AlgES256), AlgES256, baseHeader(AlgES256, "es256"), baseClaims())
	v := &Verifier{Now: func() time.Time { return testNow }} // no Issuer configured
	_, err := v.Verify(context.Background(), tok, Client{ID: testClient, Keys: ks})
	if ReasonOf(err) != ReasonAudienceMismatch {
		t.Fatalf("a verifier without issuer must accept nothing, got %v", err)
	}
}

func TestErrorHidesCause(t *testing.T) {
	_, err := testVerifier().Verify(context.Background(), "A.e30.AAAA", Client{ID: testClient})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatal(err)
	}
	if errors.Unwrap(err) == nil {
		t.Error("cause should be kept for logs")
	}
	if strings.Contains(e.Error(), "illegal base64") || strings.Contains(e.Description, "illegal") {
		t.Errorf("internal detail leaked: %q", e.Error())
	}
	if ReasonOf(nil) != "" || ReasonOf(errors.New("x")) != "" {
		t.Error("ReasonOf must be empty for non-envelope errors")
	}
}

// foreignKeySet is a KeySet implemented outside the package's own sets, to
// check the generic path (export and check per call).
type foreignKeySet map[string]jwk.Key

func (f foreignKeySet) Key(_ context.Context, kid string) (jwk.Key, error) {
	if k, ok := f[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKID
}

func TestVerifyForeignKeySet(t *testing.T) {
	es256 := testKey(t, AlgES256)
	priv, err := jwk.Import(es256)
	if err != nil {
		t.Fatal(err)
	}
	ks := foreignKeySet{"good": publicJWK(t, es256, "good", ""), "private": priv}
	v := testVerifier()
	for kid, want := range map[string]string{"good": "", "private": ReasonUnknownKID, "missing": ReasonUnknownKID} {
		tok := rawToken(t, es256, AlgES256, baseHeader(AlgES256, kid), baseClaims())
		_, err := v.Verify(context.Background(), tok, Client{ID: testClient, Keys: ks})
		if ReasonOf(err) != want {
			t.Errorf("kid %s: reason %q, want %q (%v)", kid, ReasonOf(err), want, err)
		}
	}
}

// The compact serialization's alphabet (RFC 7515 §2 base64url, plus the dots), byte by byte.
func TestBase64URLChars(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
	for c := range 256 {
		want := strings.IndexByte(alphabet, byte(c)) >= 0
		if got := base64URLChars("ab" + string([]byte{byte(c)}) + "cd"); got != want {
			t.Errorf("base64URLChars with byte %#x = %v, want %v", c, got, want)
		}
	}
}
