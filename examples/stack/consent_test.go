package stack

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandatehq/mandate/boundary"
	"github.com/mandatehq/mandate/envelope"
)

// TestAskTheUser is SPEC §11 end to end over HTTP: a tool call refused for lack of a grant
// answers with a URL elicitation naming a grant request; the user signs in at the IdP and
// approves; the same call then succeeds, under a grant created by the user.
func TestAskTheUser(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RevokeGrant(ctx, "alice", "test: start without a grant"); err != nil {
		t.Fatal(err)
	}
	alice, err := s.ConnectWithElicitation(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	tp, _ := NewTraceparent()
	_, err = Call(ctx, alice, "get_order_status", map[string]any{"order_id": "A-1001"}, tp)
	link, ok := ElicitationURL(err)
	if !ok {
		t.Fatalf("tool call without a grant: %v, want a URL elicitation", err)
	}
	if !strings.HasPrefix(link, s.Mandate.Issuer+"/consent/gr_") {
		t.Fatalf("elicitation link %q is not a consent page of %s", link, s.Mandate.Issuer)
	}
	status, page, err := NewBrowser().Decide(ctx, link, "alice", true)
	if err != nil || status != 200 || !strings.Contains(page, "Approved") {
		t.Fatalf("approve: %d %v\n%s", status, err, page)
	}
	tp, trace := NewTraceparent()
	res, err := Call(ctx, alice, "get_order_status", map[string]any{"order_id": "A-1001"}, tp)
	if err != nil || res.IsError || !strings.Contains(res.Text, `"status":"shipped"`) {
		t.Fatalf("after approval: %v %+v", err, res)
	}
	r := findExchange(t, s, trace)
	if r.Outcome != "granted" || r.GrantID == "" || r.GrantID == s.Grants["alice"] {
		t.Fatalf("exchange after approval = %+v, want a grant other than the revoked admin grant", r)
	}
	var g struct {
		CreatedBy string `json:"created_by"`
		Consent   struct {
			ApprovedBy string `json:"approved_by"`
			Text       string `json:"text"`
		} `json:"consent"`
	}
	if err := s.Admin.Do(ctx, "GET", "/grants/"+r.GrantID, nil, &g); err != nil {
		t.Fatal(err)
	}
	if g.CreatedBy != "user:alice" || g.Consent.ApprovedBy != "user:alice" || !strings.Contains(g.Consent.Text, "Orders API (orders_api)") {
		t.Fatalf("grant after approval = %+v", g)
	}
}

// TestConsentRefusals: what a client may not ask for, and what a user may not do with a
// request, each refused with its reason.
func TestConsentRefusals(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := &boundary.Identity{Actor: envelope.Actor{Type: "user", Sub: "alice", Tenant: Tenant},
		Agent: envelope.Agent{ID: AgentID}, Mode: envelope.ModeOnBehalfOf}
	ask := func(req boundary.GrantRequest) (*boundary.GrantRequestLink, error) {
		return s.Delegator.RequestGrant(ctx, id, req)
	}
	for _, c := range []struct {
		name, reason string
		req          boundary.GrantRequest
	}{
		{"audience admin_only", "audience_requires_admin_consent", boundary.GrantRequest{Audiences: []string{BillingAudience}, Scopes: []string{"balance:read"}}},
		{"duration over the maximum", "consent_duration_too_long", boundary.GrantRequest{Audiences: []string{OrdersAudience}, Scopes: []string{"orders:read"}, Duration: 8 * 24 * time.Hour}},
		{"a scope the audience does not define", "scope_not_requestable", boundary.GrantRequest{Audiences: []string{OrdersAudience}, Scopes: []string{"balance:read"}}},
		{"an unknown audience", "unknown_audience", boundary.GrantRequest{Audiences: []string{"nope"}, Scopes: []string{"orders:read"}}},
		{"a mode the audience does not allow", "mode_not_allowed_for_audience", boundary.GrantRequest{Audiences: []string{OrdersAudience}, Scopes: []string{"orders:read"}, Modes: []string{"restricted_user"}}},
	} {
		_, err := ask(c.req)
		var gre *boundary.GrantRequestError
		if !errors.As(err, &gre) || gre.Reason != c.reason || !errors.Is(err, boundary.ErrGrantRequestRefused) ||
			!errors.Is(err, boundary.ErrClientError) || errors.Is(err, boundary.ErrGrantRequired) {
			t.Errorf("%s: %v, want a client-error refusal with reason %s", c.name, err, c.reason)
		}
	}
	other := *id
	other.Actor.Tenant = "globex"
	if _, err := s.Delegator.RequestGrant(ctx, &other, boundary.GrantRequest{Audiences: []string{OrdersAudience}, Scopes: []string{"orders:read"}}); err == nil || !strings.Contains(err.Error(), "(tenant_not_allowed)") {
		t.Errorf("a tenant the client may not act in: %v", err)
	}

	link, err := ask(boundary.GrantRequest{Audiences: []string{OrdersAudience}, Scopes: []string{"orders:read"}, Purpose: "refusals"})
	if err != nil {
		t.Fatal(err)
	}
	// Another tenant's user, signed in, may not decide it.
	dave := NewBrowser()
	if status, page, err := dave.Decide(ctx, link.URL, "dave", true); err == nil || status != 0 {
		t.Fatalf("dave got an Approve form: %d %v", status, page)
	}
	_, status, page, _ := dave.Get(ctx, link.URL)
	if status != 403 || !strings.Contains(page, "Not your request") {
		t.Fatalf("dave (globex) opening alice's request: %d\n%s", status, page)
	}
	// Without the CSRF token the form is refused, and nothing is decided.
	b := NewBrowser()
	if _, _, err := b.SignIn(ctx, link.URL, "alice"); err != nil {
		t.Fatal(err)
	}
	_, status, page, _ = b.Post(ctx, link.URL, url.Values{"action": {"approve"}})
	if status != 403 || !strings.Contains(page, "did not come from this page") {
		t.Fatalf("approve without a CSRF token: %d\n%s", status, page)
	}
	if st, _ := s.Delegator.GrantRequestStatus(ctx, link.RequestID); st == nil || st.Status != "pending" {
		t.Fatalf("request after refused attempts: %+v", st)
	}
	// Approved once; the second approval is refused.
	if status, page, err := b.Decide(ctx, link.URL, "alice", true); err != nil || status != 200 || !strings.Contains(page, "Approved") {
		t.Fatalf("approve: %d %v", status, err)
	}
	if st, _ := s.Delegator.GrantRequestStatus(ctx, link.RequestID); st == nil || st.Status != "approved" || st.GrantID == "" {
		t.Fatalf("request after approval: %+v", st)
	}
	_, status, page, _ = b.Get(ctx, link.URL)
	if status != 409 || !strings.Contains(page, "Already approved") {
		t.Fatalf("reopening an approved request: %d\n%s", status, page)
	}
	var recs struct {
		Items []AuditRecord `json:"items"`
	}
	if err := s.Admin.Do(ctx, "GET", "/audit?event=consent.refused", nil, &recs); err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, r := range recs.Items {
		reasons = append(reasons, r.Reason)
	}
	if !slices.Contains(reasons, "consent_wrong_tenant") || !slices.Contains(reasons, "csrf_check_failed") {
		t.Fatalf("consent.refused audit reasons = %v", reasons)
	}

	// The access-request workflow: an admin decides a request over the admin API.
	link, err = ask(boundary.GrantRequest{Audiences: []string{OrdersAudience}, Scopes: []string{"orders:read"}})
	if err != nil {
		t.Fatal(err)
	}
	var decided struct {
		Request struct{ Status, GrantID string } `json:"request"`
		Grant   struct {
			CreatedBy string `json:"created_by"`
			Consent   struct {
				ApprovedBy string `json:"approved_by"`
			} `json:"consent"`
		} `json:"grant"`
	}
	if err := s.Admin.Do(ctx, "POST", "/grant-requests/"+link.RequestID+"/approve", nil, &decided); err != nil {
		t.Fatal(err)
	}
	if decided.Request.Status != "approved" || decided.Grant.CreatedBy != "admin:mandate-admin" || decided.Grant.Consent.ApprovedBy != "admin:mandate-admin" {
		t.Fatalf("admin approval = %+v", decided)
	}
	if err := s.Admin.Do(ctx, "POST", "/grant-requests/"+link.RequestID+"/deny", nil, nil); err == nil || !strings.Contains(err.Error(), "HTTP 409") {
		t.Fatalf("denying an approved request: %v, want 409", err)
	}
}
