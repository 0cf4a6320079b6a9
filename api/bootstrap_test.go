package api

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

func TestBootstrap(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			m, _ := secret.NewMaster(strings.Repeat("m", 32))
			h := secret.NewHasher(m)
			now := time.Now()

			if _, _, err := Bootstrap(ctx, b.open(t), h, "too-short", now); err == nil {
				t.Error("a preset secret under 32 characters was accepted")
			}

			store := b.open(t)
			sec, created, err := Bootstrap(ctx, store, h, "", now)
			if err != nil || !created || !strings.HasPrefix(sec, secret.SecretPrefix) {
				t.Fatalf("first bootstrap: %q, %v, %v", sec, created, err)
			}
			c, err := store.GetClient(ctx, AdminClientID)
			if err != nil {
				t.Fatal(err)
			}
			if !h.Verify(sec, c.SecretHash) || c.TokenEndpointAuthMethod != AuthSecretBasic ||
				len(c.GrantTypes) != 1 || c.GrantTypes[0] != GrantTypeClientCredentials ||
				len(c.AllowedScopes) != 2 || c.AllowedScopes[0] != ScopeAdmin || c.AllowedScopes[1] != ScopeAdminRead {
				t.Errorf("admin client %+v", c)
			}
			recs, _, _ := store.ListAudit(ctx, storage.AuditFilter{Event: EventBootstrap})
			if len(recs) != 1 || strings.Contains(string(recs[0].Detail), sec) {
				t.Errorf("bootstrap audit %+v", recs)
			}
			// A second start changes nothing.
			sec2, created, err := Bootstrap(ctx, store, h, "", now)
			if err != nil || created || sec2 != "" {
				t.Errorf("second bootstrap: %q, %v, %v", sec2, created, err)
			}
			if again, _ := store.GetClient(ctx, AdminClientID); !h.Verify(sec, again.SecretHash) {
				t.Error("a second bootstrap replaced the secret")
			}

			// A preset secret is used as given.
			preset := strings.Repeat("p", 40)
			store = b.open(t)
			sec, created, err = Bootstrap(ctx, store, h, preset, now)
			if err != nil || !created || sec != preset {
				t.Fatalf("preset bootstrap: %q, %v, %v", sec, created, err)
			}
			if c, _ := store.GetClient(ctx, AdminClientID); !h.Verify(preset, c.SecretHash) {
				t.Error("the preset secret does not verify")
			}

			// Replicas starting together: exactly one creates the client.
			store = b.open(t)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var winners []string
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s, created, err := Bootstrap(ctx, store, h, "", now)
					if err != nil {
						t.Errorf("concurrent bootstrap: %v", err)
						return
					}
					if created {
						mu.Lock()
						winners = append(winners, s)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if len(winners) != 1 {
				t.Fatalf("%d replicas created the admin client, want 1", len(winners))
			}
			if c, _ := store.GetClient(ctx, AdminClientID); !h.Verify(winners[0], c.SecretHash) {
				t.Error("the winner's secret is not the stored one")
			}
		})
	}
}
