package apis

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mandatehq/mandate/downstream"
)

// A token for a service actor named like a user must not read that user's data: the orders
// and billing APIs answer for users only.
func TestServiceActorDoesNotPassAsAUser(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := key.PublicKey.ECDH()
		raw := b.Bytes()
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{map[string]string{"kty": "EC", "crv": "P-256", "kid": "k1",
			"alg": "ES256", "x": base64.RawURLEncoding.EncodeToString(raw[1:33]), "y": base64.RawURLEncoding.EncodeToString(raw[33:])}}})
	}))
	defer jwks.Close()
	const iss = "https://mandate.test"
	mint := func(aud, actorType, actorSub, mode, sub string) string {
		now := time.Now()
		claims := map[string]any{"iss": iss, "aud": aud, "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
			"jti": "t1", "client_id": "mcp", "scope": "orders:read balance:read", "tenant": "acme", "delegation_mode": mode,
			"actor_type": actorType, "actor_sub": actorSub, "agent_id": "agent"}
		if mode == "on_behalf_of" {
			claims["act"] = map[string]any{"sub": "agent", "client_id": "mcp"}
		}
		h, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": "at+jwt", "kid": "k1"})
		c, _ := json.Marshal(claims)
		in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
		d := sha256.Sum256([]byte(in))
		r, s, _ := ecdsa.Sign(rand.Reader, key, d[:])
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return in + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	verifier := func(aud string) *downstream.Verifier {
		v, err := downstream.New(downstream.Config{Issuer: iss, Audience: aud, JWKSURL: jwks.URL})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	rec := &Recorder{}
	orders, billing := Orders(verifier("orders_api"), false, rec), Billing(verifier("billing_api"), rec)
	get := func(h http.Handler, path, token string) int {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	if c := get(orders, "/orders/A-1001", mint("orders_api", "user", "alice", "on_behalf_of", "alice")); c != 200 {
		t.Fatalf("alice's own order: %d", c)
	}
	if c := get(orders, "/orders/A-1001", mint("orders_api", "service", "alice", "service_identity", "mcp")); c != 403 {
		t.Errorf("a service actor named alice reading alice's order: %d, want 403", c)
	}
	if c := get(billing, "/balance", mint("billing_api", "service", "alice", "service_identity", "mcp")); c != 403 {
		t.Errorf("a service actor named alice reading alice's balance: %d, want 403", c)
	}
	if n := len(rec.Calls()); n != 1 {
		t.Errorf("%d calls recorded, want only alice's", n)
	}
}
