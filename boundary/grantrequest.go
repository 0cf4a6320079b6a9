package boundary

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Turning "no grant" into "ask the user" (SPEC §11): when Mandate refuses an exchange because
// the user has not granted what the tool needs, the MCP server creates a grant request at
// Mandate and hands the user its link, for example through MCP's URL-mode elicitation. Once
// the user approves in a browser, the next call succeeds.

// GrantRequest is what an MCP server asks a user to grant.
type GrantRequest struct {
	// Audiences the grant should cover; required.
	Audiences []string
	// Scopes asked for; required.
	Scopes []string
	// Modes asked for; empty means on_behalf_of.
	Modes []string
	// Duration of the grant once approved; zero lets Mandate use the audiences' limit.
	Duration time.Duration
	// Purpose is shown to the user: say why, in their words.
	Purpose string
	// AnyAgent asks for a grant for every agent of this client rather than the identity's.
	AnyAgent bool
}

// GrantRequestLink is a created grant request: where the user approves it.
type GrantRequestLink struct {
	RequestID string
	// URL is the consent page of this request (verification_uri_complete).
	URL string
	// VerificationURI lists every request waiting for the signed-in user.
	VerificationURI string
	ExpiresAt       time.Time
	Interval        time.Duration
}

// GrantRequestStatus is a grant request's state as Mandate reports it.
type GrantRequestStatus struct {
	RequestID string `json:"request_id"`
	Status    string `json:"status"` // pending | approved | denied | expired
	GrantID   string `json:"grant_id,omitempty"`
}

// ErrGrantRequestRefused is what every *GrantRequestError is (errors.Is): Mandate refused a
// grant request call, or did not answer it.
var ErrGrantRequestRefused = errors.New("boundary: Mandate refused the grant request")

// GrantRequestError is Mandate refusing (or not answering) a grant request call, typed by
// its reason like an ExchangeError: errors.Is(err, ErrUnavailable) means retry later,
// ErrClientError that the request or the configuration is wrong.
type GrantRequestError struct {
	// Status is the HTTP status of Mandate's answer; 0 when none came.
	Status      int
	Code        string
	Reason      string
	Description string
	RetryAfter  time.Duration

	err error // the network failure, when no answer came
}

func (e *GrantRequestError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("Mandate could not be reached for a grant request: %v", e.err)
	}
	return fmt.Sprintf("Mandate refused the grant request: HTTP %d %s (%s): %s", e.Status, e.Code, e.Reason, e.Description)
}

// Kind is the reason's kind (testdata/reasons.json), except that none of them asks for a
// grant here: the request is the ask, so a grant_required reason is a client error.
func (e *GrantRequestError) Kind() string {
	k := (&ExchangeError{Status: e.Status, Reason: e.Reason}).Kind()
	if k == KindGrantRequired {
		return KindClientError
	}
	return k
}

// Is makes errors.Is match ErrGrantRequestRefused and the sentinel of its kind.
func (e *GrantRequestError) Is(target error) bool {
	switch target {
	case ErrGrantRequestRefused:
		return true
	case ErrClientError:
		return e.Kind() == KindClientError
	case ErrUnavailable:
		return e.Kind() == KindUnavailable
	}
	return false
}

// Unwrap is the network failure, when no answer came.
func (e *GrantRequestError) Unwrap() error { return e.err }

// GrantRequired reports whether err is Mandate refusing an exchange for lack of a grant the
// user could give (reason no_active_grant or grant_does_not_cover_audience_or_mode, on an
// audience that lets users consent), and returns that refusal.
func GrantRequired(err error) (*ExchangeError, bool) {
	var xe *ExchangeError
	if !errors.As(err, &xe) || xe.GrantRequestEndpoint == "" {
		return nil, false
	}
	switch xe.Reason {
	case "no_active_grant", "grant_does_not_cover_audience_or_mode":
		return xe, true
	}
	return nil, false
}

// RequestGrant asks Mandate to have id's user grant req to this client (POST
// /oauth2/grant-requests), for id's agent unless req.AnyAgent, and returns the link to give
// the user.
func (d *Delegator) RequestGrant(ctx context.Context, id *Identity, req GrantRequest) (*GrantRequestLink, error) {
	if id == nil {
		return nil, ErrNoIdentity
	}
	body := map[string]any{
		"tenant": id.Actor.Tenant, "subject": id.Actor.Sub, "audiences": req.Audiences,
		"scopes": req.Scopes, "purpose": req.Purpose,
	}
	if !req.AnyAgent && id.Agent.ID != "" {
		body["agent_id"] = id.Agent.ID
	}
	if len(req.Modes) > 0 {
		body["modes"] = req.Modes
	}
	if req.Duration > 0 {
		body["duration"] = int64(req.Duration / time.Second)
	}
	var out struct {
		RequestID               string `json:"request_id"`
		VerificationURI         string `json:"verification_uri"`
		VerificationURIComplete string `json:"verification_uri_complete"`
		ExpiresIn               int64  `json:"expires_in"`
		Interval                int64  `json:"interval"`
	}
	now := d.cfg.Now()
	if err := d.grantRequestCall(ctx, http.MethodPost, d.cfg.Issuer+"/oauth2/grant-requests", body, http.StatusCreated, &out); err != nil {
		return nil, err
	}
	if out.RequestID == "" || !strings.HasPrefix(out.VerificationURIComplete, d.cfg.Issuer+"/") {
		return nil, fmt.Errorf("%w: malformed answer", ErrGrantRequestRefused)
	}
	return &GrantRequestLink{RequestID: out.RequestID, URL: out.VerificationURIComplete,
		VerificationURI: out.VerificationURI, ExpiresAt: now.Add(time.Duration(out.ExpiresIn) * time.Second),
		Interval: time.Duration(out.Interval) * time.Second}, nil
}

// GrantRequestStatus reads a grant request this client created.
func (d *Delegator) GrantRequestStatus(ctx context.Context, requestID string) (*GrantRequestStatus, error) {
	var out GrantRequestStatus
	u := d.cfg.Issuer + "/oauth2/grant-requests/" + url.PathEscape(requestID)
	if err := d.grantRequestCall(ctx, http.MethodGet, u, nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// grantRequestCall sends a client-authenticated call to the grant request endpoint: JSON with
// client_secret_basic, or a form with a client assertion for private_key_jwt (a GET becomes
// the POST Mandate accepts for that).
func (d *Delegator) grantRequestCall(ctx context.Context, method, u string, body map[string]any, want int, dst any) error {
	var rd io.Reader
	contentType := ""
	if d.cfg.AssertionKey != nil {
		a, err := d.assertion(d.cfg.Now())
		if err != nil {
			return err
		}
		if body == nil {
			body = map[string]any{}
			method = http.MethodPost
		}
		body["client_id"] = d.cfg.ClientID
		body["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
		body["client_assertion"] = a
	}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd, contentType = strings.NewReader(string(b)), "application/json"
		if method == http.MethodPost && strings.Contains(u, "/oauth2/grant-requests/") {
			// Polling by POST takes a form (the JSON form is for creating requests).
			form := url.Values{}
			for k, v := range body {
				if s, ok := v.(string); ok {
					form.Set(k, s)
				}
			}
			rd, contentType = strings.NewReader(form.Encode()), "application/x-www-form-urlencoded"
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if d.cfg.AssertionKey == nil {
		req.SetBasicAuth(url.QueryEscape(d.cfg.ClientID), url.QueryEscape(d.cfg.ClientSecret))
	}
	resp, err := d.cfg.HTTPClient.Do(req)
	if err != nil {
		return &GrantRequestError{err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponseBytes))
	if err != nil {
		return &GrantRequestError{err: err}
	}
	if resp.StatusCode != want {
		var e tokenResponse
		_ = json.Unmarshal(raw, &e)
		return &GrantRequestError{Status: resp.StatusCode, Code: e.Error, Reason: e.Reason, Description: e.Description,
			RetryAfter: retryAfter(resp.Header.Get("Retry-After"), d.cfg.Now())}
	}
	return json.Unmarshal(raw, dst)
}

// Message is what to tell the user about the link.
func (l *GrantRequestLink) Message(purpose string) string {
	msg := "Approve access in your browser: " + l.URL
	if purpose != "" {
		msg = purpose + ". " + msg
	}
	return msg
}

// Elicitation is the link as an MCP URL-mode elicitation; its id is the request id, so a
// client can tell repeated asks for the same request apart.
func (l *GrantRequestLink) Elicitation(message string) *mcp.ElicitParams {
	return &mcp.ElicitParams{Mode: "url", Message: message, URL: l.URL, ElicitationID: l.RequestID}
}

// ElicitationError is the JSON-RPC error (URLElicitationRequired, -32042) a tool handler
// returns, as is and unwrapped, to have a client that supports URL elicitation open the
// link and retry the call once the user is done.
func (l *GrantRequestLink) ElicitationError(message string) error {
	return mcp.URLElicitationRequiredError([]*mcp.ElicitParams{l.Elicitation(message)})
}

// SupportsURLElicitation reports whether the client of req declared URL-mode elicitation.
func SupportsURLElicitation(req *mcp.CallToolRequest) bool {
	if req == nil || req.Session == nil {
		return false
	}
	p := req.Session.InitializeParams()
	return p != nil && p.Capabilities != nil && p.Capabilities.Elicitation != nil && p.Capabilities.Elicitation.URL != nil
}

// AskUser turns err, when it is a refusal for lack of a grant the user could give, into the
// answer a tool should return: a URL elicitation error for clients that support it, else an
// error whose text carries the link. Any other err is returned unchanged.
func (d *Delegator) AskUser(ctx context.Context, req *mcp.CallToolRequest, err error, ask GrantRequest) error {
	if _, ok := GrantRequired(err); !ok {
		return err
	}
	id, ok := FromContext(ctx)
	if !ok {
		return err
	}
	link, lerr := d.RequestGrant(ctx, id, ask)
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	if SupportsURLElicitation(req) {
		return link.ElicitationError(link.Message(ask.Purpose))
	}
	return fmt.Errorf("%w. %s", err, link.Message(ask.Purpose))
}
