package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandatehq/mandate/boundary"
	"github.com/mandatehq/mandate/envelope"
)

// findExchange returns the token_exchange audit record with trace id trace.
func findExchange(t *testing.T, s *Stack, trace string) AuditRecord {
	t.Helper()
	recs, err := s.Exchanges(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.TraceID == trace {
			return r
		}
	}
	t.Fatalf("no audit record with trace id %s", trace)
	return AuditRecord{}
}

// TestEndToEnd drives the whole chain over real HTTP: demo IdP → go-sdk client → MCP
// server (boundary) → envelope → Mandate exchange → downstream verification → audit.
func TestEndToEnd(t *testing.T) {
	ctx := context.Background()
	type seen struct {
		authHeader string
		identity   string
		tokenInfo  string
	}
	inspected := make(chan seen, 1)
	s, err := Start(ctx, Options{Dir: t.TempDir(), ExtraTools: func(srv *mcp.Server) {
		// A tool that reports everything it can reach about its own request.
		mcp.AddTool(srv, &mcp.Tool{Name: "inspect"}, func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, struct{}, error) {
			var sn seen
			if req.Extra != nil {
				sn.authHeader = req.Extra.Header.Get("Authorization")
				sn.tokenInfo = fmt.Sprintf("%#v", req.Extra.TokenInfo)
			}
			id, ok := boundary.FromContext(ctx)
			if ok {
				b, _ := json.Marshal(id)
				sn.identity = string(b) + fmt.Sprintf("%#v", *id)
			}
			if ti := auth.TokenInfoFromContext(ctx); ti != nil {
				sn.tokenInfo += fmt.Sprintf("%#v", ti)
			}
			inspected <- sn
			return nil, struct{}{}, nil
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	aliceTok, err := s.UserToken(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	alice, err := s.ConnectWithToken(ctx, aliceTok)
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()

	t.Run("tool handler cannot reach the raw token", func(t *testing.T) {
		tp, _ := NewTraceparent()
		if _, err := Call(ctx, alice, "inspect", map[string]any{}, tp); err != nil {
			t.Fatal(err)
		}
		sn := <-inspected
		if sn.authHeader != "" {
			t.Fatalf("tool saw Authorization: %q", sn.authHeader)
		}
		if !strings.Contains(sn.identity, `"sub":"alice"`) {
			t.Fatalf("tool did not get the identity: %s", sn.identity)
		}
		sig := aliceTok[strings.LastIndex(aliceTok, ".")+1:]
		for what, v := range map[string]string{"identity": sn.identity, "token info": sn.tokenInfo} {
			if strings.Contains(v, aliceTok) || strings.Contains(v, sig) {
				t.Fatalf("the raw token is reachable through the %s", what)
			}
		}
	})

	t.Run("granted calls are audited with user, agent, mode and trace", func(t *testing.T) {
		for _, c := range []struct {
			tool, want, audience string
			args                 any
		}{
			{"get_order_status", `"status":"shipped"`, OrdersAudience, map[string]any{"order_id": "A-1001"}},
			{"get_balance", `"balance":"1250.00 EUR"`, BillingAudience, map[string]any{}},
		} {
			tp, trace := NewTraceparent()
			res, err := Call(ctx, alice, c.tool, c.args, tp)
			if err != nil || res.IsError || !strings.Contains(res.Text, c.want) || !strings.Contains(res.Text, trace) {
				t.Fatalf("%s: %v %+v", c.tool, err, res)
			}
			r := findExchange(t, s, trace)
			if r.Outcome != "granted" || r.ActorSub != "alice" || r.Tenant != Tenant || r.AgentID != AgentID ||
				r.DelegationMode != envelope.ModeOnBehalfOf || r.Audience != c.audience || r.ClientID != MCPClientID || r.GrantID != s.Grants["alice"] {
				t.Fatalf("%s audit record = %+v", c.tool, r)
			}
		}
		// The APIs saw the same identity, and this call's traceparent.
		calls := append(s.Orders.Calls(), s.Billing.Calls()...)
		if len(calls) != 2 {
			t.Fatalf("downstream calls = %+v", calls)
		}
		for _, c := range calls {
			if c.User != "alice" || c.AgentID != AgentID || c.Mode != envelope.ModeOnBehalfOf || !strings.Contains(c.Header, c.TraceID) {
				t.Fatalf("downstream saw %+v", c)
			}
		}
	})

	t.Run("user without a grant gets a clear tool error", func(t *testing.T) {
		carol, err := s.Connect(ctx, "carol")
		if err != nil {
			t.Fatal(err)
		}
		defer carol.Close()
		tp, trace := NewTraceparent()
		res, err := Call(ctx, carol, "get_order_status", map[string]any{"order_id": "C-3001"}, tp)
		if err != nil || !res.IsError || !strings.Contains(res.Text, "Mandate refused a token for orders_api") || !strings.Contains(res.Text, "grant") {
			t.Fatalf("carol: %v %+v", err, res)
		}
		if r := findExchange(t, s, trace); r.Outcome != "denied" || r.ActorSub != "carol" {
			t.Fatalf("carol audit = %+v", r)
		}
	})

	t.Run("a token for orders_api is refused by the billing API", func(t *testing.T) {
		id := &boundary.Identity{Actor: envelope.Actor{Type: "user", Sub: "alice", Tenant: Tenant}, Agent: envelope.Agent{ID: AgentID},
			Session: envelope.Session{ID: "s", TraceID: boundary.NewTraceID()}, Scopes: []string{"orders:read", "balance:read"}, Mode: envelope.ModeOnBehalfOf,
			ExpiresAt: time.Now().Add(time.Minute)}
		tok, err := s.Delegator.Token(ctx, id, OrdersAudience, "orders:read")
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", s.BillingURL+"/balance", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Fatalf("billing API answered %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
		if _, err := s.BillingVerifier.Verify(ctx, tok); err == nil || !strings.Contains(err.Error(), "audience") {
			t.Fatalf("verify: %v", err)
		}
	})

	t.Run("after the grant is revoked the next call is denied", func(t *testing.T) {
		if err := s.RevokeGrant(ctx, "alice", "test"); err != nil {
			t.Fatal(err)
		}
		// alice's orders token is still cached and unexpired: the orders API's
		// introspection refuses it, the transport re-exchanges, and Mandate says no.
		tp, trace := NewTraceparent()
		res, err := Call(ctx, alice, "get_order_status", map[string]any{"order_id": "A-1002"}, tp)
		if err != nil || !res.IsError || !strings.Contains(res.Text, "Mandate refused a token for orders_api") {
			t.Fatalf("after revocation: %v %+v", err, res)
		}
		if r := findExchange(t, s, trace); r.Outcome != "denied" || r.ActorSub != "alice" || r.Reason == "" {
			t.Fatalf("revoked audit = %+v", r)
		}
	})
}

// TestPrivateKeyJWT runs one call with the MCP server authenticating by private_key_jwt.
func TestPrivateKeyJWT(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Options{Dir: t.TempDir(), PrivateKeyJWT: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bob, err := s.Connect(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	tp, trace := NewTraceparent()
	res, err := Call(ctx, bob, "get_order_status", map[string]any{"order_id": "B-2001"}, tp)
	if err != nil || res.IsError || !strings.Contains(res.Text, "delivered") {
		t.Fatalf("%v %+v", err, res)
	}
	if r := findExchange(t, s, trace); r.Outcome != "granted" || r.ActorSub != "bob" {
		t.Fatalf("audit = %+v", r)
	}
	// bob has no grant for billing_api.
	res, err = Call(ctx, bob, "get_balance", map[string]any{}, tp)
	if err != nil || !res.IsError || !strings.Contains(res.Text, "billing_api") {
		t.Fatalf("bob balance: %v %+v", err, res)
	}
}
