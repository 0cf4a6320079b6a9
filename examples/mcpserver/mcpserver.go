// Package mcpserver is the demo MCP server (go-sdk, streamable HTTP) behind the identity
// boundary. Its tools, get_order_status and get_balance, read who they act for from
// boundary.FromContext — never from their arguments, never from a token — and reach the
// downstream APIs through the Delegator's clients, which exchange the identity at Mandate
// for a token per API. When Mandate refuses for lack of a grant the user could give,
// get_order_status asks the user with a grant request (Delegator.AskUser).
package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandatehq/mandate/boundary"
)

// Config wires the server.
type Config struct {
	Boundary   *boundary.Boundary
	Delegator  *boundary.Delegator
	OrdersURL  string // base URL of the orders API
	BillingURL string // base URL of the billing API
	// ExtraTools lets tests add tools (for example one that inspects its own request).
	ExtraTools func(*mcp.Server)
}

// OrderArgs are get_order_status's arguments. There is deliberately no user argument:
// the user comes from the boundary, the model cannot choose it.
type OrderArgs struct {
	OrderID string `json:"order_id" jsonschema:"the order id, e.g. A-1001"`
}

// OrderStatus is get_order_status's result.
type OrderStatus struct {
	OrderID string `json:"order_id"`
	Status  string `json:"status"`
	User    string `json:"user"`
	TraceID string `json:"trace_id"`
}

// Balance is get_balance's result.
type Balance struct {
	User    string `json:"user"`
	Balance string `json:"balance"`
	TraceID string `json:"trace_id"`
}

// New returns the MCP endpoint's handler (mount it at /mcp).
func New(cfg Config) http.Handler {
	server := mcp.NewServer(&mcp.Implementation{Name: "mandate-demo-mcp", Version: "1.0.0"}, nil)
	orders := cfg.Delegator.Client("orders_api", "orders:read")
	billing := cfg.Delegator.Client("billing_api", "balance:read")

	mcp.AddTool(server, &mcp.Tool{Name: "get_order_status", Description: "Status of one of the current user's orders."},
		func(ctx context.Context, req *mcp.CallToolRequest, in OrderArgs) (*mcp.CallToolResult, OrderStatus, error) {
			id, ok := boundary.FromContext(ctx)
			if !ok {
				return nil, OrderStatus{}, errors.New("no caller identity")
			}
			var out OrderStatus
			if err := getJSON(ctx, orders, cfg.OrdersURL+"/orders/"+url.PathEscape(in.OrderID), &out); err != nil {
				// No grant yet: ask the user (a URL elicitation when the client supports it).
				return nil, OrderStatus{}, cfg.Delegator.AskUser(ctx, req, err, boundary.GrantRequest{
					Audiences: []string{"orders_api"}, Scopes: []string{"orders:read"},
					Purpose: "Look up the status of your orders",
				})
			}
			out.TraceID = id.Session.TraceID
			return nil, out, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "get_balance", Description: "The current user's account balance."},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, Balance, error) {
			id, ok := boundary.FromContext(ctx)
			if !ok {
				return nil, Balance{}, errors.New("no caller identity")
			}
			var out Balance
			if err := getJSON(ctx, billing, cfg.BillingURL+"/balance", &out); err != nil {
				return nil, Balance{}, err
			}
			out.TraceID = id.Session.TraceID
			return nil, out, nil
		})
	if cfg.ExtraTools != nil {
		cfg.ExtraTools(server)
	}
	return cfg.Boundary.MCPHandler(server, nil)
}

// getJSON calls a downstream API with the tool's context (which carries the identity the
// Delegator's transport needs) and turns refusals into tool errors.
func getJSON(ctx context.Context, c *http.Client, u string, dst any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		var xe *boundary.ExchangeError
		if errors.As(err, &xe) {
			return xe // the message names the audience and Mandate's reason
		}
		return fmt.Errorf("calling the API failed: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		if a := resp.Header.Get("WWW-Authenticate"); a != "" {
			return fmt.Errorf("the API refused the call: HTTP %d (%s)", resp.StatusCode, a)
		}
		return fmt.Errorf("the API answered HTTP %d: %s", resp.StatusCode, body)
	}
	return json.Unmarshal(body, dst)
}
