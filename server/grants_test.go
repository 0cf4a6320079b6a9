package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
)

// mcpClient is a registered MCP server that signs envelopes.
type mcpClient struct {
	id, secret string
	signer     *envelope.Signer
}

// newMCPClient registers an MCP server through r's admin API, and an audience it may reach
// that users may consent to.
func newMCPClient(t *testing.T, r *replica, admin string) *mcpClient {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	x, y := make([]byte, 32), make([]byte, 32)
	key.X.FillBytes(x) //nolint:staticcheck // the JWK needs the coordinates
	key.Y.FillBytes(y) //nolint:staticcheck
	jwk := map[string]any{"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": "k1", "alg": "ES256", "use": "sig"}
	if a := r.call(t, http.MethodPost, "/audiences", admin, map[string]any{
		"id": "orders_api", "scopes": []string{"orders:read"}, "user_consent": "allowed",
	}); a.status != http.StatusCreated {
		t.Fatalf("create audience: %d %s", a.status, a.raw)
	}
	a := r.call(t, http.MethodPost, "/clients", admin, map[string]any{
		"client_id": "mcp", "grant_types": []string{exchange.GrantTypeTokenExchange},
		"allowed_tenants": []string{"acme"}, "jwks": map[string]any{"keys": []any{jwk}},
	})
	if a.status != http.StatusCreated {
		t.Fatalf("create client: %d %s", a.status, a.raw)
	}
	s, err := envelope.NewSigner(key, "k1")
	if err != nil {
		t.Fatal(err)
	}
	return &mcpClient{id: "mcp", secret: a.str("client_secret"), signer: s}
}

// exchange asks r for a token for user to orders_api, with a fresh envelope.
func (c *mcpClient) exchange(t *testing.T, r *replica, user string) answer {
	t.Helper()
	env, err := c.signer.Sign(envelope.Claims{
		Issuer:        c.id,
		Audience:      envelope.Audience{testIssuer},
		Actor:         envelope.Actor{Type: envelope.ActorUser, Sub: user, Tenant: "acme"},
		Agent:         envelope.Agent{ID: "agent_1"},
		Session:       envelope.Session{ID: "sess_1", TraceID: "trace_1"},
		Authorization: envelope.Authorization{Scopes: []string{"orders:read"}, Confidence: envelope.ConfidenceVerified},
		Delegation:    envelope.Delegation{Mode: envelope.ModeOnBehalfOf},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r.form(t, "/oauth2/token", c.id, c.secret, url.Values{
		"grant_type": {exchange.GrantTypeTokenExchange}, "subject_token": {env},
		"subject_token_type": {envelope.TokenType}, "audience": {"orders_api"},
	})
}

// untilGranted repeats an exchange at r until it is granted, and says how long that took.
func (c *mcpClient) untilGranted(t *testing.T, r *replica, user string, since time.Time) time.Duration {
	t.Helper()
	for {
		a := c.exchange(t, r, user)
		if a.status == http.StatusOK {
			return time.Since(since)
		}
		if a.str("reason") != exchange.ReasonNoActiveGrant {
			t.Fatalf("exchange: %d %s", a.status, a.raw)
		}
		if time.Since(since) > 5*time.Second {
			t.Fatalf("the other replica still finds no grant for %s %s after it was made", user, time.Since(since))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A grant made through one replica (by an admin, or by approving a grant request) is used
// by the others at once, although each had just cached "no grant" for that user: an SDK that
// turned no_active_grant into "ask the user" retries as soon as the user said yes.
func TestNewGrantsReachOtherReplicasAtOnce(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		reps := startTogether(t, b.open(t, 2, DefaultDatabaseTimeout), Options{CacheTTL: time.Hour})
		a, other := reps[0], reps[1]
		admin := a.adminToken(t)
		c := newMCPClient(t, a, admin)

		if got := c.exchange(t, other, "user_1"); got.str("reason") != exchange.ReasonNoActiveGrant {
			t.Fatalf("before any grant: %d %s", got.status, got.raw)
		}
		if g := a.call(t, http.MethodPost, "/grants", admin, map[string]any{
			"tenant": "acme", "subject": "user_1", "client_id": "mcp", "audiences": []string{"orders_api"},
			"scopes": []string{"orders:read"}, "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		}); g.status != http.StatusCreated {
			t.Fatalf("create grant: %d %s", g.status, g.raw)
		}
		t.Logf("%s: admin grant used by the other replica %s after it was made",
			b.name, c.untilGranted(t, other, "user_1", time.Now()).Round(time.Millisecond))

		if got := c.exchange(t, other, "user_2"); got.str("reason") != exchange.ReasonNoActiveGrant {
			t.Fatalf("before the request: %d %s", got.status, got.raw)
		}
		form := url.Values{"tenant": {"acme"}, "subject": {"user_2"}, "audiences": {"orders_api"},
			"scopes": {"orders:read"}, "purpose": {"read orders"}}
		gr := a.form(t, "/oauth2/grant-requests", c.id, c.secret, form)
		if gr.status != http.StatusCreated || gr.str("request_id") == "" {
			t.Fatalf("grant request: %d %s", gr.status, gr.raw)
		}
		if d := a.call(t, http.MethodPost, "/grant-requests/"+gr.str("request_id")+"/approve", admin, nil); d.status != http.StatusOK {
			t.Fatalf("approve: %d %s", d.status, d.raw)
		}
		t.Logf("%s: approved grant request used by the other replica %s after the approval",
			b.name, c.untilGranted(t, other, "user_2", time.Now()).Round(time.Millisecond))
	})
}
