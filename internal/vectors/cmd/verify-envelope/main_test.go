package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mandatehq/mandate/internal/vectors"
)

// TestRun feeds the command every envelope vector, as an SDK's test would feed it what it
// signed, and expects each vector's verdict back, in order.
func TestRun(t *testing.T) {
	f, err := vectors.Envelopes()
	if err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, v := range f.Vectors {
		_ = enc.Encode(request{Token: v.Token, JWKS: f.JWKS, ClientID: f.ClientID, Issuer: f.Issuer,
			Now: f.Now, MaxLifetime: f.MaxEnvelopeLifetime})
	}
	in.WriteString("\n") // blank lines are skipped
	var out bytes.Buffer
	if err := run(&in, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(f.Vectors) {
		t.Fatalf("%d answers for %d requests", len(lines), len(f.Vectors))
	}
	for i, v := range f.Vectors {
		var a answer
		if err := json.Unmarshal([]byte(lines[i]), &a); err != nil {
			t.Fatal(err)
		}
		if a.Valid != v.Valid || a.Reason != v.Reason {
			t.Errorf("%s: got %+v, want valid=%v reason=%q", v.Name, a, v.Valid, v.Reason)
		}
	}
	if err := run(strings.NewReader("not json\n"), &out); err == nil {
		t.Error("a malformed line was accepted")
	}
}
