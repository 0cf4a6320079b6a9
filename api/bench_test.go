package api

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkGetClient: one authenticated, validated GET through the whole handler on SQLite,
// in process (no network).
func BenchmarkGetClient(b *testing.B) {
	e := newBenchEnv(b)
	h := e.srv.Config.Handler
	req := httptest.NewRequest("GET", "/admin/v1/clients/webapp", nil)
	req.Header.Set("Authorization", "Bearer "+tokAdmin)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkCreateClientRejected: a create the spec rejects (validation cost alone).
func BenchmarkCreateClientRejected(b *testing.B) {
	e := newBenchEnv(b)
	h := e.srv.Config.Handler
	body := []byte(`{"client_id":"-bad","grant_types":["password"],"max_token_ttl":0}`)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/admin/v1/clients", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokAdmin)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusBadRequest {
			b.Fatalf("status %d", w.Code)
		}
	}
}

func newBenchEnv(b *testing.B) *env {
	b.Helper()
	e := newEnv(b, openSQLite(b))
	w := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/admin/v1/clients", bytes.NewReader([]byte(`{"client_id":"webapp"}`)))
	req.Header.Set("Authorization", "Bearer "+tokAdmin)
	req.Header.Set("Content-Type", "application/json")
	e.srv.Config.Handler.ServeHTTP(w, req)
	if w.Code != 201 {
		b.Fatalf("create: %d %s", w.Code, w.Body)
	}
	return e
}
