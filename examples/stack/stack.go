// Package stack starts the whole demo on loopback ports: Mandate (in-process, SQLite in a
// temporary directory, wired like cmd/mandate), the demo identity provider, the orders and
// billing APIs (package downstream) and the demo MCP server (package boundary, go-sdk
// streamable HTTP); it provisions Mandate through its admin API and gives callers an MCP
// client per user. examples/demo and the end-to-end test both run on it.
package stack

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandatehq/mandate/boundary"
	"github.com/mandatehq/mandate/consent"
	"github.com/mandatehq/mandate/downstream"
	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/examples/apis"
	"github.com/mandatehq/mandate/examples/idp"
	"github.com/mandatehq/mandate/examples/mcpserver"
)

// Names the demo provisions.
const (
	MCPClientID     = "demo-mcp"
	OrdersClientID  = "orders-api"
	AgentID         = "support-agent"
	Tenant          = "acme"
	OrdersAudience  = "orders_api"
	BillingAudience = "billing_api"
	// ConsentClientID is Mandate's client id at the demo IdP, for the consent pages.
	ConsentClientID = "mandate-consent"
)

var timeNow = time.Now

// Options tune Start.
type Options struct {
	// Dir holds the SQLite database. Required (a t.TempDir() or os.MkdirTemp).
	Dir string
	// PrivateKeyJWT makes the MCP server authenticate to Mandate with private_key_jwt
	// instead of client_secret_basic.
	PrivateKeyJWT bool
	// ExtraTools are added to the MCP server (tests use it).
	ExtraTools func(*mcp.Server)
	// Logger for every component; default discards.
	Logger *slog.Logger
}

// Stack is the running demo.
type Stack struct {
	Mandate    *mandate
	IdP        *idp.IdP
	IdPURL     string
	MCPURL     string // the MCP endpoint (…/mcp)
	OrdersURL  string
	BillingURL string
	Orders     *apis.Recorder
	Billing    *apis.Recorder
	Delegator  *boundary.Delegator
	// BillingVerifier verifies tokens the way the billing API does.
	BillingVerifier *downstream.Verifier
	Admin           *Admin
	// Grants holds the provisioned grant ids by user.
	Grants map[string]string

	closers []func()
}

// Close stops everything.
func (s *Stack) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

func serve(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// Start starts and provisions the stack.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stack{Orders: &apis.Recorder{}, Billing: &apis.Recorder{}, Grants: map[string]string{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	// The identity provider. Its issuer is its own URL, known once it listens. It is also
	// the organisation's sign-in provider for Mandate's consent pages.
	idpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.IdPURL = "http://" + idpLn.Addr().String()
	if s.IdP, err = idp.New(s.IdPURL); err != nil {
		idpLn.Close()
		return nil, err
	}
	idpSrv := &http.Server{Handler: s.IdP.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go idpSrv.Serve(idpLn)
	s.closers = append(s.closers, func() { idpSrv.Close() })

	// Mandate, signing users in at the IdP.
	consentSecret := randomString(40)
	m, err := startMandate(ctx, opts.Dir, log, &consent.OIDCConfig{
		Issuer: s.IdPURL, ClientID: ConsentClientID, ClientSecret: consentSecret, TenantClaim: "tenant",
	})
	if err != nil {
		return nil, fmt.Errorf("start Mandate: %w", err)
	}
	s.Mandate = m
	s.closers = append(s.closers, m.close)
	s.IdP.RegisterClient(ConsentClientID, consentSecret, m.Issuer+consent.PathCallback)
	s.Admin, err = NewAdmin(ctx, m.Issuer, m.AdminURL, m.AdminSecret)
	if err != nil {
		return nil, err
	}

	// The MCP server's keys: one signs envelopes, one signs private_key_jwt assertions.
	envKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	assertKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := map[string]any{"keys": []any{publicJWK(&envKey.PublicKey, "mcp-envelope-1"), publicJWK(&assertKey.PublicKey, "mcp-client-auth-1")}}

	// Provision Mandate: audiences, the MCP server's client, the orders API's
	// introspection client, and grants (alice: both APIs; bob: orders only; carol: none).
	mcpSecret, ordersSecret, err := s.provision(ctx, jwks, opts.PrivateKeyJWT)
	if err != nil {
		return nil, fmt.Errorf("provision Mandate: %w", err)
	}

	// The downstream APIs.
	ordersV, err := downstream.New(downstream.Config{
		Issuer: m.Issuer, Audience: OrdersAudience, Logger: log,
		Introspection: &downstream.IntrospectionConfig{ClientID: OrdersClientID, ClientSecret: ordersSecret},
	})
	if err != nil {
		return nil, err
	}
	var stop func()
	if s.OrdersURL, stop, err = serve(apis.Orders(ordersV, true, s.Orders)); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, stop)
	if s.BillingVerifier, err = downstream.New(downstream.Config{Issuer: m.Issuer, Audience: BillingAudience, Logger: log}); err != nil {
		return nil, err
	}
	if s.BillingURL, stop, err = serve(apis.Billing(s.BillingVerifier, s.Billing)); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, stop)

	// The MCP server.
	mcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.MCPURL = "http://" + mcpLn.Addr().String() + "/mcp"
	b, err := boundary.New(boundary.Config{
		Issuer: s.IdPURL, Audience: s.MCPURL, ClientID: MCPClientID, AgentID: AgentID, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	signer, err := envelope.NewSigner(envKey, "mcp-envelope-1")
	if err != nil {
		return nil, err
	}
	// Each audience's token goes to that API's own URL and nowhere else.
	dc := boundary.DelegatorConfig{Issuer: m.Issuer, ClientID: MCPClientID, Signer: signer,
		Audiences: map[string][]string{OrdersAudience: {s.OrdersURL}, BillingAudience: {s.BillingURL}}}
	if opts.PrivateKeyJWT {
		dc.AssertionKey, dc.AssertionKeyID = assertKey, "mcp-client-auth-1"
	} else {
		dc.ClientSecret = mcpSecret
	}
	if s.Delegator, err = boundary.NewDelegator(dc); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", mcpserver.New(mcpserver.Config{
		Boundary: b, Delegator: s.Delegator, OrdersURL: s.OrdersURL, BillingURL: s.BillingURL, ExtraTools: opts.ExtraTools,
	}))
	mcpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go mcpSrv.Serve(mcpLn)
	s.closers = append(s.closers, func() { mcpSrv.Close() })
	return s, nil
}

func (s *Stack) provision(ctx context.Context, jwks map[string]any, pkjwt bool) (mcpSecret, ordersSecret string, err error) {
	a := s.Admin
	for _, aud := range []map[string]any{
		// Users may grant the orders API themselves, for at most a week; the billing API
		// only through an admin.
		{"id": OrdersAudience, "name": "Orders API", "scopes": []string{"orders:read"}, "allowed_modes": []string{"on_behalf_of"},
			"user_consent": "allowed", "max_consent_duration": 7 * 24 * 3600},
		{"id": BillingAudience, "name": "Billing API", "scopes": []string{"balance:read"}, "allowed_modes": []string{"on_behalf_of"},
			"user_consent": "admin_only"},
	} {
		if err := a.Do(ctx, "POST", "/audiences", aud, nil); err != nil {
			return "", "", err
		}
	}
	method := "client_secret_basic"
	if pkjwt {
		method = "private_key_jwt"
	}
	var created struct {
		ClientSecret string `json:"client_secret"`
	}
	if err := a.Do(ctx, "POST", "/clients", map[string]any{
		"client_id": MCPClientID, "name": "Demo MCP server", "token_endpoint_auth_method": method,
		"jwks": jwks, "grant_types": []string{"urn:ietf:params:oauth:grant-type:token-exchange"},
		"allowed_tenants": []string{Tenant},
	}, &created); err != nil {
		return "", "", err
	}
	mcpSecret = created.ClientSecret
	created.ClientSecret = ""
	if err := a.Do(ctx, "POST", "/clients", map[string]any{
		"client_id": OrdersClientID, "name": "Orders API (introspection)",
		"token_endpoint_auth_method": "client_secret_basic", "grant_types": []string{"client_credentials"},
	}, &created); err != nil {
		return "", "", err
	}
	ordersSecret = created.ClientSecret
	for user, auds := range map[string][]string{"alice": {OrdersAudience, BillingAudience}, "bob": {OrdersAudience}} {
		scopes := []string{"orders:read"}
		if len(auds) == 2 {
			scopes = append(scopes, "balance:read")
		}
		var g struct {
			ID string `json:"id"`
		}
		if err := a.Do(ctx, "POST", "/grants", map[string]any{
			"tenant": Tenant, "subject": user, "client_id": MCPClientID, "agent_id": AgentID,
			"audiences": auds, "scopes": scopes, "modes": []string{"on_behalf_of"},
			"expires_at": timeNow().Add(24 * time.Hour).UTC().Format(time.RFC3339),
		}, &g); err != nil {
			return "", "", err
		}
		s.Grants[user] = g.ID
	}
	return mcpSecret, ordersSecret, nil
}

// RevokeGrant revokes user's grant through the admin API.
func (s *Stack) RevokeGrant(ctx context.Context, user, reason string) error {
	return s.Admin.Do(ctx, "POST", "/grants/"+s.Grants[user]+"/revoke", map[string]string{"reason": reason}, nil)
}

func publicJWK(k *ecdsa.PublicKey, kid string) map[string]string {
	pub, _ := k.ECDH()
	b := pub.Bytes()
	return map[string]string{
		"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
		"x": base64.RawURLEncoding.EncodeToString(b[1:33]), "y": base64.RawURLEncoding.EncodeToString(b[33:65]),
	}
}

// Admin calls Mandate's admin API with a bootstrap-admin token.
type Admin struct {
	base  string
	token string
}

// NewAdmin gets a client_credentials token for mandate-admin.
func NewAdmin(ctx context.Context, issuer, adminURL, secret string) (*Admin, error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	req, _ := http.NewRequestWithContext(ctx, "POST", issuer+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("mandate-admin", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&tr) != nil || tr.AccessToken == "" {
		return nil, fmt.Errorf("admin token: HTTP %d", resp.StatusCode)
	}
	return &Admin{base: adminURL + "/admin/v1", token: tr.AccessToken}, nil
}

// Do sends body as JSON and decodes the answer into out (when not nil).
func (a *Admin) Do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("admin %s %s: HTTP %d: %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// AuditRecord is the part of an audit record the demo shows.
type AuditRecord struct {
	Time           time.Time `json:"time"`
	Event          string    `json:"event"`
	Outcome        string    `json:"outcome"`
	Reason         string    `json:"reason"`
	ClientID       string    `json:"client_id"`
	AgentID        string    `json:"agent_id"`
	ActorSub       string    `json:"actor_sub"`
	Tenant         string    `json:"tenant"`
	DelegationMode string    `json:"delegation_mode"`
	TraceID        string    `json:"trace_id"`
	Audience       string    `json:"audience"`
	GrantedScopes  []string  `json:"granted_scopes"`
	GrantID        string    `json:"grant_id"`
}

// Exchanges returns the token_exchange audit records, oldest first.
func (s *Stack) Exchanges(ctx context.Context) ([]AuditRecord, error) {
	var out []AuditRecord
	cursor := ""
	for {
		var page struct {
			Items      []AuditRecord `json:"items"`
			NextCursor string        `json:"next_cursor"`
		}
		q := url.Values{"event": {"token_exchange"}, "limit": {"100"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		if err := s.Admin.Do(ctx, "GET", "/audit?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Items...)
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 { // the API lists newest first
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// UserToken gets a token for user from the demo IdP's token endpoint, for the MCP server.
func (s *Stack) UserToken(ctx context.Context, user string) (string, error) {
	form := url.Values{"username": {user}, "resource": {s.MCPURL}}
	req, _ := http.NewRequestWithContext(ctx, "POST", s.IdPURL+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&tr) != nil {
		return "", fmt.Errorf("IdP token for %s: HTTP %d", user, resp.StatusCode)
	}
	return tr.AccessToken, nil
}

type traceKey struct{}

// WithTraceparent makes MCP requests sent with ctx carry the traceparent header tp.
func WithTraceparent(ctx context.Context, tp string) context.Context {
	return context.WithValue(ctx, traceKey{}, tp)
}

// userTransport is the MCP client's HTTP transport: the user's bearer token (what an MCP
// client does after OAuth) and the caller's traceparent.
type userTransport struct{ token string }

func (t userTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	if tp, _ := req.Context().Value(traceKey{}).(string); tp != "" {
		r.Header.Set("traceparent", tp)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Connect opens an MCP session (go-sdk client, streamable HTTP) as user.
func (s *Stack) Connect(ctx context.Context, user string) (*mcp.ClientSession, error) {
	tok, err := s.UserToken(ctx, user)
	if err != nil {
		return nil, err
	}
	return s.ConnectWithToken(ctx, tok)
}

// ConnectWithToken opens an MCP session presenting token.
func (s *Stack) ConnectWithToken(ctx context.Context, token string) (*mcp.ClientSession, error) {
	return s.connect(ctx, token, nil)
}

// ConnectWithElicitation opens an MCP session as user from a client that declares URL-mode
// elicitation, so tools may answer "open this link" (SPEC §11's grant requests).
func (s *Stack) ConnectWithElicitation(ctx context.Context, user string) (*mcp.ClientSession, error) {
	tok, err := s.UserToken(ctx, user)
	if err != nil {
		return nil, err
	}
	return s.connect(ctx, tok, &mcp.ClientOptions{Capabilities: &mcp.ClientCapabilities{
		Elicitation: &mcp.ElicitationCapabilities{URL: &mcp.URLElicitationCapabilities{}},
	}})
}

func (s *Stack) connect(ctx context.Context, token string, opts *mcp.ClientOptions) (*mcp.ClientSession, error) {
	c := mcp.NewClient(&mcp.Implementation{Name: "demo-chat-app", Version: "1.0.0"}, opts)
	return c.Connect(ctx, &mcp.StreamableClientTransport{
		Endpoint: s.MCPURL, HTTPClient: &http.Client{Transport: userTransport{token}}, DisableStandaloneSSE: true, MaxRetries: -1,
	}, nil)
}

// ToolResult is a tool call's outcome in plain terms.
type ToolResult struct {
	Text    string // the text content (JSON for successful demo tools)
	IsError bool
}

// Call calls tool with args on session, sending traceparent tp.
func Call(ctx context.Context, cs *mcp.ClientSession, tool string, args any, tp string) (ToolResult, error) {
	res, err := cs.CallTool(WithTraceparent(ctx, tp), &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		return ToolResult{}, err
	}
	var parts []string
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, t.Text)
		}
	}
	if len(parts) == 0 && res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		parts = append(parts, string(b))
	}
	return ToolResult{Text: strings.Join(parts, "\n"), IsError: res.IsError}, nil
}

// NewTraceparent returns a fresh W3C traceparent and its trace id.
func NewTraceparent() (header, traceID string) {
	traceID = boundary.NewTraceID()
	return "00-" + traceID + "-" + boundary.NewSpanID() + "-01", traceID
}
