package exchange

import (
	"context"
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
