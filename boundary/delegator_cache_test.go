package boundary

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http/httptest"
	"testing"

	"github.com/mandatehq/mandate/envelope"
)

// The envelope carries the inbound token's scopes and Mandate only narrows them, so a token
// exchanged for a broader inbound token must not be handed to a request whose inbound token
// granted less, even for the same user, agent and audience.
func TestDelegatorCacheKeyedByIdentityScopes(t *testing.T) {
	ep := &tokenEndpoint{expiresIn: 300}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := envelope.NewSigner(key, "env1")
	d, err := NewDelegator(DelegatorConfig{Issuer: "https://mandate.test", TokenURL: srv.URL, ClientID: "webapp", ClientSecret: "s3cret", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	broad := &Identity{Actor: envelope.Actor{Type: "user", Sub: "alice", Tenant: "acme"}, Agent: envelope.Agent{ID: "agent_1"},
		Session: envelope.Session{ID: "s1"}, Scopes: []string{"orders:read", "orders:write"}, Mode: envelope.ModeOnBehalfOf}
	narrow := *broad
	narrow.Scopes = []string{"orders:read"}
	ctx := context.Background()
	t1, err := d.Token(ctx, broad, "orders_api")
	if err != nil {
		t.Fatal(err)
	}
	t2, err := d.Token(ctx, &narrow, "orders_api")
	if err != nil {
		t.Fatal(err)
	}
	if t1 == t2 || ep.n.Load() != 2 {
		t.Fatalf("the narrower identity was served the broader identity's token (%d exchanges)", ep.n.Load())
	}
	// The same scopes in another order are the same identity.
	same := *broad
	same.Scopes = []string{"orders:write", "orders:read"}
	if t3, _ := d.Token(ctx, &same, "orders_api"); t3 != t1 || ep.n.Load() != 2 {
		t.Fatalf("no cache hit for the same scopes: %d exchanges", ep.n.Load())
	}
}
