package exchange

import (
	"encoding/json"
	"testing"

	"github.com/mandatehq/mandate/envelope"
)

// AppendJSON must write exactly what json.Marshal writes: the signed bytes are the token.
func TestTokenClaimsJSON(t *testing.T) {
	full := sampleClaims()
	cases := map[string]*TokenClaims{
		"full":    full,
		"minimal": {Issuer: "https://m", Subject: "c", Audience: "a", ExpiresAt: 2, IssuedAt: 1, JTI: "at_1", ClientID: "c"},
		"escapes": {Issuer: "<&>\"\\\x00\x1f\b\f\n\r\t\x7f", Subject: "\u2028\u2029é😀", Audience: "\xff\xfe bad",
			Scope: "a&b c<d", Tenant: "t", Act: &envelope.Act{Sub: "s", Act: &envelope.Act{Sub: "\"", ClientID: "x"}}},
		"negative": {ExpiresAt: -5, IssuedAt: -9223372036854775808},
	}
	for name, c := range cases {
		want, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.AppendJSON(nil); string(got) != string(want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

// FuzzAppendJSONString holds AppendJSONString to encoding/json on any string.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "<&>", "\u2028", "\xff", "\"\\\x01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := AppendJSONString(nil, s); string(got) != string(want) {
			t.Fatalf("%q: got %s want %s", s, got, want)
		}
	})
}

func sampleClaims() *TokenClaims {
	return &TokenClaims{Issuer: "https://mandate.example.com", Subject: "user-8b1f0c2e", Audience: "orders_api",
		ExpiresAt: 1893456300, IssuedAt: 1893456000, JTI: "at_0193f2a1c4d5e6f708192a3b4c", ClientID: "mcp-crm-server",
		Scope: "crm:read crm:write", Tenant: "acme", DelegationMode: "on_behalf_of", ActorSub: "user-8b1f0c2e",
		AgentID: "agent-42", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SessionID: "sess-77", GrantID: "grt_0193f2a1c4d5e6f7081",
		Act: &envelope.Act{Sub: "agent-42", ClientID: "mcp-crm-server", Act: &envelope.Act{Sub: "planner"}}}
}

// BenchmarkTokenClaimsJSON compares the claims encoders of the token endpoint.
func BenchmarkTokenClaimsJSON(b *testing.B) {
	c := sampleClaims()
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = c.AppendJSON(make([]byte, 0, 640))
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(c); err != nil {
				b.Fatal(err)
			}
		}
	})
}
