package server

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage/sqlite"
	"github.com/mandatehq/mandate/throttle"
)

// Failed client authentications are counted in /metrics by endpoint and reason, throttled
// requests by endpoint, and never by the client id they claimed (made up at will, each would
// be a new series).
func TestFailedAuthenticationsAreCountedWithoutClaimedIDs(t *testing.T) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	master, _ := secret.NewMaster(strings.Repeat("s", 40))
	s, err := New(ctx, Options{Store: store, Master: master, Issuer: "http://mandate.test",
		AuthFailures: throttle.Config{Burst: 3}})
	if err != nil {
		t.Fatal(err)
	}
	pub := httptest.NewServer(s.PublicHandler())
	defer pub.Close()
	admin := httptest.NewServer(s.AdminHandler())
	defer admin.Close()

	for i := range 5 {
		req, _ := http.NewRequest(http.MethodPost, pub.URL+"/oauth2/token",
			strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("made-up-client-"+strings.Repeat("z", i+1), "x")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	res, err := http.Get(admin.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	metrics := string(body)
	for _, want := range []string{
		`mandate_client_authentication_failures_total{endpoint="token",reason="client_authentication_failed"} 3`,
		`mandate_throttled_requests_total{endpoint="token"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, "made-up-client") {
		t.Error("/metrics names a claimed client id")
	}
}
