package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRequestIDReachesResponseAndLogs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(LogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "test")
	h := withRequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.InfoContext(r.Context(), "handled")
	}))

	cases := []struct {
		name, sent string
		kept       bool
	}{
		{"a proxy's id is kept", "edge-7f3a.1_b", true},
		{"none sent: one is made", "", false},
		{"an id that could forge log lines is replaced", "x\nlevel=ERROR", false},
		{"an overlong id is replaced", string(bytes.Repeat([]byte("a"), 65)), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			buf.Reset()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.sent != "" {
				req.Header.Set("X-Request-Id", tc.sent)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Header().Get("X-Request-Id")
			if tc.kept && got != tc.sent || !tc.kept && (got == tc.sent || !validRequestID(got)) {
				t.Fatalf("X-Request-Id = %q (sent %q)", got, tc.sent)
			}
			var line struct {
				RequestID string `json:"request_id"`
				Component string `json:"component"`
			}
			if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
				t.Fatalf("log line %q: %v", buf.String(), err)
			}
			if line.RequestID != got || line.Component != "test" {
				t.Fatalf("log line %s: want request_id %q and the logger's attributes", buf.String(), got)
			}
		})
	}
}
