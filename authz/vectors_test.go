package authz_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/internal/vectors"
	"github.com/mandatehq/mandate/storage"
)

// TestVectorsThroughTheTokenEndpoint presents every shared envelope vector to the token
// endpoint as its client, under a grant and client that allow everything the valid ones ask
// for: the valid ones are exchanged, and each refused one is answered (and audited) with the
// vector's wire reason.
func TestVectorsThroughTheTokenEndpoint(t *testing.T) {
	f, err := vectors.Envelopes()
	if err != nil {
		t.Fatal(err)
	}
	eachBackend(t, func(t *testing.T, store storage.Store) {
		e := newVectorEnv(t, store, f)
		for _, vec := range f.Vectors {
			t.Run(vec.Name, func(t *testing.T) {
				// Judge each vector at exactly its instant: on a slow run the time-edge vectors
				// (60 s of skew, no more) would otherwise drift across their edges.
				e.clock.Advance(f.Time().Sub(e.clock.Now()))
				r := e.post("/oauth2/token", f.ClientID, exchangeForm(vec.Token, ordersAPI))
				if vec.Valid {
					c := e.wantToken(t, r)
					want := envelope.ActorUser
					if vec.Name == "service-actor" {
						want = envelope.ActorService
					}
					if c.ActorType != want || c.Scope != "orders:read" {
						t.Errorf("token actor_type %q scope %q", c.ActorType, c.Scope)
					}
					return
				}
				wantError(t, r, 400, "invalid_request")
				if got := r.str("reason"); got != vec.WireReason {
					t.Fatalf("reason %q, want %q (%s)", got, vec.WireReason, r.raw)
				}
			})
		}
		// Every refusal was audited with the reason it was answered with.
		items, _, err := store.ListAudit(context.Background(), storage.AuditFilter{ClientID: f.ClientID, Page: storage.Page{Limit: 500}})
		if err != nil {
			t.Fatal(err)
		}
		var reasons []string
		for _, it := range items {
			reasons = append(reasons, it.Reason)
		}
		for _, vec := range f.Vectors {
			if !vec.Valid && !slices.Contains(reasons, vec.WireReason) {
				t.Errorf("no audit record with reason %s (%s)", vec.WireReason, vec.Name)
			}
		}
	})
}

// newVectorEnv is a server judging the shared envelope vectors: their issuer, their clock, their
// client with their keys, and a client and grant that allow everything the valid ones ask for.
func newVectorEnv(t *testing.T, store storage.Store, f *vectors.EnvelopeFile) *env {
	e := newEnvIssuer(t, store, f.Issuer)
	e.clock.Advance(f.Time().Sub(e.clock.Now()))
	e.addClient(&storage.Client{ID: f.ClientID, JWKS: f.JWKS, MaxEnvelopeLifetime: time.Duration(f.MaxEnvelopeLifetime) * time.Second,
		AllowedTenants: []string{"acme"}, AllowedAudiences: []string{ordersAPI}, AllowedScopes: []string{"orders:read"},
		ServiceActors: []string{"nightly-batch"}})
	e.addGrant(&storage.Grant{ClientID: f.ClientID, Tenant: "acme", Subject: "alice", Audiences: []string{ordersAPI},
		Scopes: []string{"orders:read"}})
	return e
}
