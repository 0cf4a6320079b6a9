package downstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// A caller that hangs up while its unknown-kid refresh is in flight must not turn the
// refresh into a failed attempt: that would answer every token with the issuer's new kid
// with 503 for the whole refresh interval, and a client could repeat it at will.
func TestJWKSRefreshSurvivesCanceledCaller(t *testing.T) {
	is := newIssuer(t)
	var gate atomic.Pointer[chan struct{}]
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g := gate.Load(); g != nil {
			arrived <- struct{}{}
			<-*g
		}
		is.srv.Config.Handler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	c := &clock{t: time.Now()}
	k := NewJWKS(srv.URL, JWKSOptions{Now: c.Now})
	if _, err := k.key(context.Background(), "k1"); err != nil {
		t.Fatal(err)
	}
	c.Add(2 * time.Minute)
	is.addKey("k2")
	release := make(chan struct{})
	gate.Store(&release)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := k.key(ctx, "k2"); errc <- err }()
	<-arrived
	cancel()
	if err := <-errc; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("canceled caller: %v, want ErrUnavailable", err)
	}
	gate.Store(nil)
	close(release)

	// Within the refresh interval, k2 is known: the refresh finished for everyone.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := k.key(context.Background(), "k2")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the canceled caller's refresh: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := k.Fetches(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
}
