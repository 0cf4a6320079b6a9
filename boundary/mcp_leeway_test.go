package boundary

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandatehq/mandate/envelope"
)

// A token the boundary accepts (expired, but within Config.Leeway) must not then be refused
// by the SDK's own expiry check, which knows no leeway and answers 401 without a challenge.
func TestMCPHandlerHonoursLeeway(t *testing.T) {
	p := newIdP(t)
	b := newBoundary(t, p, nil)
	h := b.MCPHandler(mcp.NewServer(&mcp.Implementation{Name: "t", Version: "1"}, nil), nil)
	claims := p.claims()
	claims["exp"] = time.Now().Add(-10 * time.Second).Unix()
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}`
	req := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+p.mint(claims))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d (%q), challenge %q; want 200", rec.Code, strings.TrimSpace(rec.Body.String()), rec.Header().Get("WWW-Authenticate"))
	}
}

// The MCP SDK binds a session to TokenInfo.UserID: tenant "a/b" with user "c" and tenant
// "a" with user "b/c" are different users and must not share a session.
func TestSessionUserIDKeepsTenantAndUserApart(t *testing.T) {
	id := func(tenant, sub string) *Identity {
		return &Identity{Actor: envelope.Actor{Type: envelope.ActorUser, Tenant: tenant, Sub: sub}}
	}
	pairs := [][2]*Identity{
		{id("a/b", "c"), id("a", "b/c")},
		{id(`a"`, `b`), id(`a`, `"b`)},
		{id("a", ""), id("", "a")},
	}
	for _, p := range pairs {
		x, y := tokenInfo(p[0]).UserID, tokenInfo(p[1]).UserID
		if x == y {
			t.Errorf("(%q, %q) and (%q, %q) share the session user %q", p[0].Actor.Tenant, p[0].Actor.Sub,
				p[1].Actor.Tenant, p[1].Actor.Sub, x)
		}
	}
}
