package boundary

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
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
