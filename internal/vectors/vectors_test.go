package vectors

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFilesAreWellFormed checks the vector files themselves: unique names, a reason for
// every refusal that testdata/reasons.json knows, and claims that are the token's payload, so
// an SDK reading them can trust what it reads.
func TestFilesAreWellFormed(t *testing.T) {
	known := reasons(t)
	env, err := Envelopes()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	valid, invalid := 0, 0
	for _, v := range env.Vectors {
		if names[v.Name] {
			t.Errorf("envelope vector %q twice", v.Name)
		}
		names[v.Name] = true
		switch v.Signer {
		case SignerAccept, SignerRefuse, SignerNA:
		default:
			t.Errorf("%s: signer %q", v.Name, v.Signer)
		}
		if v.Valid {
			valid++
			if v.Reason != "" || v.WireReason != "" || v.Signer == SignerRefuse {
				t.Errorf("%s: a valid vector with a refusal", v.Name)
			}
		} else {
			invalid++
			if v.Reason == "" || !known[v.WireReason] {
				t.Errorf("%s: reason %q, wire reason %q not in testdata/reasons.json", v.Name, v.Reason, v.WireReason)
			}
		}
		if parts := strings.Split(v.Token, "."); len(parts) == 3 && !strings.Contains(v.Name, "signature") && v.Name != "too-large" {
			payload, err := base64.RawURLEncoding.DecodeString(parts[1])
			if err != nil || !sameJSON(t, payload, v.Claims) {
				t.Errorf("%s: claims are not the token's payload", v.Name)
			}
		}
	}
	if valid < 5 || invalid < 30 {
		t.Errorf("%d valid and %d invalid envelope vectors: too few", valid, invalid)
	}

	at, err := AccessTokens()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range at.Vectors {
		switch {
		case v.Valid && (v.Principal == nil || v.Error != ""):
			t.Errorf("%s: a valid access token needs a principal and no error", v.Name)
		case !v.Valid && v.Error != "invalid_token" && v.Error != "insufficient_scope":
			t.Errorf("%s: error %q", v.Name, v.Error)
		case v.Valid && v.Principal.ActorType == "service" && v.Principal.User != "":
			t.Errorf("%s: a service actor presented as a user", v.Name)
		}
	}
}

func reasons(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Dir(), "..", "reasons.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Reasons []struct {
			Reason string `json:"reason"`
		} `json:"reasons"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, r := range doc.Reasons {
		out[r.Reason] = true
	}
	return out
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return string(ja) == string(jb)
}
