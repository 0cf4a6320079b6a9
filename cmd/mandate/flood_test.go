package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// The flood sends failing token requests from the source address it was given, with
// made-up client ids of the length asked, and counts the answers by status.
func TestFloodSendsBadCredentialsFromItsSource(t *testing.T) {
	var mu sync.Mutex
	sources, idLens := map[string]bool{}, map[int]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _, ok := r.BasicAuth()
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		mu.Lock()
		sources[host], idLens[len(id)] = true, ok
		mu.Unlock()
		if r.URL.Path != "/oauth2/token" || r.FormValue("grant_type") != "client_credentials" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	var out bytes.Buffer
	err := run(context.Background(), []string{"flood", "--url", srv.URL, "--source", "127.0.0.6", "--duration", "300ms",
		"--concurrency", "2", "--id-bytes", "50", "--json"}, func(string) string { return "" }, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	var res floodResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, out.Bytes())
	}
	srv.Close() // waits for the handlers still running
	mu.Lock()
	defer mu.Unlock()
	if res.Requests == 0 || res.ByStatus["401"] != res.Requests {
		t.Errorf("result %+v: want every request answered 401", res)
	}
	if len(sources) != 1 || !sources["127.0.0.6"] || len(idLens) != 1 || !idLens[50] {
		t.Errorf("sources %v, client id lengths %v; want 127.0.0.6 and 50", sources, idLens)
	}
}
