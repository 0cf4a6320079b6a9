package envelope_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
)

// An MCP server signs an envelope after validating its user's token; Mandate
// verifies it against the keys registered for that client.
func ExampleSigner() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := envelope.NewSigner(key, "webapp-2026-01")
	if err != nil {
		panic(err)
	}
	token, err := signer.Sign(envelope.Claims{
		Issuer:        "webapp-prod",
		Audience:      envelope.Audience{"https://mandate.example.com"},
		Actor:         envelope.Actor{Type: envelope.ActorUser, Sub: "user_123", Tenant: "acme"},
		Agent:         envelope.Agent{ID: "agent_456"},
		Session:       envelope.Session{ID: "sess_789", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"},
		Authorization: envelope.Authorization{Scopes: []string{"orders:read"}, Confidence: envelope.ConfidenceVerified},
		Delegation:    envelope.Delegation{Mode: envelope.ModeOnBehalfOf, Allowed: []string{"orders_api"}},
	})
	if err != nil {
		panic(err)
	}

	// The public key the client registers with Mandate (its "jwks").
	pub, _ := jwk.Import(key.Public())
	_ = pub.Set(jwk.KeyIDKey, signer.KID())
	_ = pub.Set(jwk.AlgorithmKey, signer.Alg())
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	jwks, _ := json.Marshal(set)

	keys, err := envelope.NewStaticKeySet(jwks)
	if err != nil {
		panic(err)
	}
	v := &envelope.Verifier{Issuer: "https://mandate.example.com"}
	claims, err := v.Verify(context.Background(), token, envelope.Client{ID: "webapp-prod", Keys: keys})
	fmt.Println(claims.Actor.Sub, claims.Agent.ID, claims.Delegation.Mode, err)
	// Output: user_123 agent_456 on_behalf_of <nil>
}
