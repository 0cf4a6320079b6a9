package boundary

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/mandatehq/mandate/envelope"
)

// api is a downstream API that records the Authorization header of every request it gets.
type api struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []string // "path auth"
}

func newAPI(t *testing.T, h func(w http.ResponseWriter, r *http.Request)) *api {
	a := &api{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen = append(a.seen, r.URL.Path+" "+r.Header.Get("Authorization"))
		a.mu.Unlock()
		if h != nil {
			h(w, r)
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *api) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.seen...)
}

func testDelegator(t *testing.T, audiences map[string][]string) (*Delegator, *tokenEndpoint) {
	t.Helper()
	ep := &tokenEndpoint{expiresIn: 300}
	mandate := httptest.NewServer(ep)
	t.Cleanup(mandate.Close)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := envelope.NewSigner(key, "env1")
	d, err := NewDelegator(DelegatorConfig{Issuer: "https://mandate.test", TokenURL: mandate.URL, ClientID: "webapp",
		ClientSecret: "s3cret", Signer: signer, Audiences: audiences})
	if err != nil {
		t.Fatal(err)
	}
	return d, ep
}

func aliceCtx() context.Context {
	return WithIdentity(context.Background(), &Identity{Actor: envelope.Actor{Type: "user", Sub: "alice", Tenant: "acme"},
		Agent: envelope.Agent{ID: "agent_1"}, Session: envelope.Session{ID: "s1", TraceID: NewTraceID()},
		Scopes: []string{"orders:read"}, Mode: envelope.ModeOnBehalfOf})
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(aliceCtx(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	return res, err
}

// sdk-contract §3: an audience's token goes only to that audience's own base URLs. A request
// anywhere else is refused before anything is sent (no exchange either), and a redirect that
// leaves them is not followed: the caller gets the 3xx, and the other host never the token.
func TestTokenOnlyGoesToTheAudiencesBaseURLs(t *testing.T) {
	elsewhere := newAPI(t, nil)
	orders := newAPI(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/away":
			http.Redirect(w, r, elsewhere.srv.URL+"/steal", http.StatusFound)
		case "/api/moved":
			http.Redirect(w, r, "/api/here", http.StatusMovedPermanently)
		case "/api/loop":
			http.Redirect(w, r, "/api/loop", http.StatusFound)
		}
	})
	d, ep := testDelegator(t, map[string][]string{"orders_api": {orders.srv.URL + "/api"}})
	c := d.Client("orders_api")

	res, err := get(t, c, orders.srv.URL+"/api/orders/1")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("request under the base URL: %v %v", res, err)
	}
	if got := orders.requests(); len(got) != 1 || !strings.HasPrefix(got[0], "/api/orders/1 Bearer tok-") {
		t.Fatalf("the API saw %q", got)
	}

	for _, u := range []string{
		elsewhere.srv.URL + "/api/orders/1",                              // another host
		strings.Replace(orders.srv.URL, "http:", "https:", 1) + "/api/x", // another scheme
		orders.srv.URL + "/apis/x",                                       // not on a segment boundary
		orders.srv.URL + "/other",                                        // outside the prefix
		orders.srv.URL + "/api/../admin",                                 // climbs out
		orders.srv.URL + "/api/%2e%2e/admin",                             // climbs out, encoded
	} {
		if _, err := get(t, c, u); !errors.Is(err, ErrURLNotAllowed) {
			t.Errorf("%s: %v, want ErrURLNotAllowed", u, err)
		}
	}
	exchanges := ep.n.Load()

	// A redirect to another host: the 302 comes back, unfollowed.
	res, err = get(t, c, orders.srv.URL+"/api/away")
	if err != nil || res.StatusCode != http.StatusFound {
		t.Fatalf("redirect away: %v %v, want the 302 itself", res, err)
	}
	if got := elsewhere.requests(); len(got) != 0 {
		t.Fatalf("the other host got %q", got)
	}
	// A redirect that stays under the base URL is followed, with the token.
	res, err = get(t, c, orders.srv.URL+"/api/moved")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("redirect within the API: %v %v", res, err)
	}
	if got := orders.requests(); !strings.HasPrefix(got[len(got)-1], "/api/here Bearer tok-") {
		t.Errorf("the redirected request: %q", got[len(got)-1])
	}
	// At most 5 redirects are followed; then the last 3xx is returned.
	before := len(orders.requests())
	res, err = get(t, c, orders.srv.URL+"/api/loop")
	if err != nil || res.StatusCode != http.StatusFound || len(orders.requests())-before != 6 {
		t.Errorf("redirect loop: %v %v after %d requests, want the 302 after 6", res, err, len(orders.requests())-before)
	}
	if ep.n.Load() != exchanges {
		t.Errorf("refused or redirected requests caused %d more exchanges", ep.n.Load()-exchanges)
	}

	// A Transport in a client of the caller's own refuses the foreign hop too.
	own := &http.Client{Transport: &Transport{Delegator: d, Audience: "orders_api"}}
	if _, err := get(t, own, orders.srv.URL+"/api/away"); !errors.Is(err, ErrURLNotAllowed) {
		t.Errorf("own client following a redirect away: %v, want ErrURLNotAllowed", err)
	}
	if got := elsewhere.requests(); len(got) != 0 {
		t.Fatalf("the other host got %q", got)
	}
	// An audience with no base URLs configured gets no token anywhere.
	if _, err := get(t, d.Client("billing_api"), orders.srv.URL+"/api/x"); !errors.Is(err, ErrURLNotAllowed) {
		t.Errorf("unconfigured audience: %v, want ErrURLNotAllowed", err)
	}
	// A Host header other than the URL's is refused: the token would reach a virtual host
	// the base URL does not name.
	req, _ := http.NewRequestWithContext(aliceCtx(), http.MethodGet, orders.srv.URL+"/api/x", nil)
	req.Host = "admin.internal"
	if _, err := c.Do(req); !errors.Is(err, ErrURLNotAllowed) {
		t.Errorf("Host header elsewhere: %v, want ErrURLNotAllowed", err)
	}
}

func TestDelegatorRefusesBadBaseURLs(t *testing.T) {
	for _, base := range []string{"orders.example.com", "ftp://orders.example.com", "http://orders.example.com/",
		"https://user:pw@orders.example.com", "https://orders.example.com/?q=1", "https://orders.example.com/#f", "https:///x"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		signer, _ := envelope.NewSigner(key, "env1")
		_, err := NewDelegator(DelegatorConfig{Issuer: "https://mandate.test", ClientID: "webapp", ClientSecret: "s",
			Signer: signer, Audiences: map[string][]string{"orders_api": {base}}})
		if err == nil {
			t.Errorf("base URL %q accepted", base)
		}
	}
}
