package exchange

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// slowClients answers each GetClient, once it has begun, with the version the test sends.
type slowClients struct {
	storage.Store
	entered chan struct{}
	name    chan string
}

func (s *slowClients) GetClient(context.Context, string) (*storage.Client, error) {
	s.entered <- struct{}{}
	return &storage.Client{ID: "c", Name: <-s.name}, nil
}

// A load that read a client before a change, and returns after the change invalidated the
// cache, must not put the old version back for a whole TTL.
func TestCatalogDoesNotCacheALoadAnInvalidationOvertook(t *testing.T) {
	st := &slowClients{entered: make(chan struct{}), name: make(chan string)}
	c := NewCatalog(st, time.Hour, nil)
	done := make(chan *storage.Client)
	go func() {
		cl, _ := c.Client(t.Context(), "c")
		done <- cl
	}()
	<-st.entered
	c.InvalidateAll() // the change commits and is announced while the load is under way
	st.name <- "before the change"
	if cl := <-done; cl.Name != "before the change" {
		t.Fatalf("first load returned %q", cl.Name)
	}
	go func() {
		<-st.entered
		st.name <- "after the change"
	}()
	cl, err := c.Client(t.Context(), "c")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Name != "after the change" {
		t.Fatalf("after an invalidation that overtook a load, the catalog served %q from its cache", cl.Name)
	}
}

// grantsOnly answers the grant lookups from a fixed list and counts the calls.
type grantsOnly struct {
	storage.Store
	grants []storage.Grant
	calls  int
}

func (s *grantsOnly) ActiveGrantsOf(_ context.Context, tenant, client string, _ time.Time, limit int) ([]storage.Grant, error) {
	s.calls++
	var out []storage.Grant
	for _, g := range s.grants {
		if g.Tenant == tenant && g.ClientID == client && len(out) < limit {
			out = append(out, g)
		}
	}
	return out, nil
}

func (s *grantsOnly) FindActiveGrants(_ context.Context, q storage.GrantQuery) ([]storage.Grant, error) {
	s.calls++
	var out []storage.Grant
	for _, g := range s.grants {
		if g.Tenant == q.Tenant && g.ClientID == q.ClientID && (g.Subject == q.Subject || g.Subject == storage.AnySubject) &&
			(g.AgentID == "" || g.AgentID == q.AgentID) {
			out = append(out, g)
		}
	}
	return out, nil
}

// BenchmarkCatalogGrants looks up the grants of 10,000 users under one "*" grant, warm: the
// exchange's grant step. It reports the store calls per lookup (0 once the client's list is
// cached, however many users there are).
func BenchmarkCatalogGrants(b *testing.B) {
	now := time.Now()
	st := &grantsOnly{grants: []storage.Grant{{ID: "grt_any", Tenant: "acme", Subject: storage.AnySubject, ClientID: "mcp",
		Audiences: []string{"orders_api"}, NotBefore: now.Add(-time.Hour), ExpiresAt: now.Add(time.Hour)}}}
	c := NewCatalog(st, time.Hour, func() time.Time { return now })
	qs := make([]storage.GrantQuery, 10000)
	for i := range qs {
		qs[i] = storage.GrantQuery{Tenant: "acme", Subject: fmt.Sprintf("user-%d", i), ClientID: "mcp",
			AgentID: fmt.Sprintf("agent-%d", i%50), Now: now}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		g, err := c.Grants(b.Context(), qs[i%len(qs)])
		if err != nil || len(g) != 1 {
			b.Fatalf("%v %v", g, err)
		}
	}
	b.ReportMetric(float64(st.calls)/float64(b.N), "store-calls/op")
}
