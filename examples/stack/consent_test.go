package stack

import (
	"context"
	"strings"
	"testing"
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
