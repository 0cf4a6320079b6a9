// Command demo runs the whole chain on loopback ports and prints what happened: a demo
// identity provider, Mandate (SQLite in a temporary directory), an MCP server behind the
// identity boundary, and two downstream APIs. It provisions Mandate through the admin API,
// calls the tools as alice and bob through the go-sdk client, revokes alice's grant, and
// prints Mandate's audit trail: user, agent, mode and trace id of every exchange.
//
//	go run ./examples/demo      (or: make demo)
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mandatehq/mandate/examples/stack"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "mandate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s, err := stack.Start(ctx, stack.Options{Dir: dir})
	if err != nil {
		return err
	}
	defer s.Close()

	fmt.Fprintf(out, "Mandate     %s (admin %s, SQLite in %s)\n", s.Mandate.Issuer, s.Mandate.AdminURL, dir)
	fmt.Fprintf(out, "demo IdP    %s\nMCP server  %s\norders API  %s (introspection)\nbilling API %s (offline JWKS)\n\n", s.IdPURL, s.MCPURL, s.OrdersURL, s.BillingURL)
	fmt.Fprintln(out, "Provisioned: audiences orders_api, billing_api; client demo-mcp; grants alice→orders_api+billing_api, bob→orders_api.")
	fmt.Fprintln(out)

	type step struct{ user, tool, order string }
	sessions := map[string]interface{ Close() error }{}
	call := func(st step) error {
		cs, err := s.Connect(ctx, st.user)
		if err != nil {
			return fmt.Errorf("connect as %s: %w", st.user, err)
		}
		sessions[st.user+fmt.Sprint(len(sessions))] = cs
		var args any = map[string]any{}
		label := st.tool
		if st.order != "" {
			args = map[string]any{"order_id": st.order}
			label += "(" + st.order + ")"
		}
		tp, trace := stack.NewTraceparent()
		res, err := stack.Call(ctx, cs, st.tool, args, tp)
		if err != nil {
			return err
		}
		verdict := "ok   "
		if res.IsError {
			verdict = "ERROR"
		}
		fmt.Fprintf(out, "%-6s %-26s trace %s  %s %s\n", st.user, label, trace[:12]+"…", verdict, oneLine(res.Text))
		return nil
	}
	for _, st := range []step{
		{"alice", "get_order_status", "A-1001"},
		{"alice", "get_balance", ""},
		{"bob", "get_order_status", "B-2001"},
		{"bob", "get_order_status", "A-1001"},
		{"bob", "get_balance", ""},
		{"carol", "get_order_status", "C-3001"},
	} {
		if err := call(st); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "\n-- admin revokes alice's grant --")
	if err := s.RevokeGrant(ctx, "alice", "demo: access withdrawn"); err != nil {
		return err
	}
	if err := askAlice(ctx, s, out); err != nil {
		return err
	}
	for _, cs := range sessions {
		cs.Close()
	}

	fmt.Fprintln(out, "\nWhat the downstream APIs saw (from their verified tokens):")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "API\tUSER\tAGENT\tMODE\tTOKEN TRACE\tTRACEPARENT")
	for _, c := range append(s.Orders.Calls(), s.Billing.Calls()...) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.API, c.User, c.AgentID, c.Mode, c.TraceID, c.Header)
	}
	tw.Flush()

	recs, err := s.Exchanges(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\nMandate audit trail (GET /admin/v1/audit?event=token_exchange):")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tOUTCOME\tREASON\tUSER\tAGENT\tMODE\tAUDIENCE\tTRACE ID\tGRANT")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Format("15:04:05.000"), r.Outcome, dash(r.Reason),
			r.Tenant+"/"+r.ActorSub, r.AgentID, r.DelegationMode, r.Audience, r.TraceID, dash(r.GrantID))
	}
	return tw.Flush()
}

// askAlice is SPEC §11 from the MCP client's side: the tool call is refused for lack of a
// grant and answers with a link (MCP URL elicitation); alice approves in a browser (here,
// headlessly over HTTP: sign in at the demo IdP, press Approve); the same call succeeds.
func askAlice(ctx context.Context, s *stack.Stack, out io.Writer) error {
	cs, err := s.ConnectWithElicitation(ctx, "alice")
	if err != nil {
		return err
	}
	defer cs.Close()
	tp, trace := stack.NewTraceparent()
	_, err = stack.Call(ctx, cs, "get_order_status", map[string]any{"order_id": "A-1002"}, tp)
	link, ok := stack.ElicitationURL(err)
	if !ok {
		return fmt.Errorf("expected the tool to ask for a grant, got %v", err)
	}
	fmt.Fprintf(out, "%-6s %-26s trace %s  ASK   no_active_grant: the tool asks alice to approve at\n       %s\n", "alice", "get_order_status(A-1002)", trace[:12]+"…", link)
	fmt.Fprintln(out, "       (a person opens it in a browser and signs in as alice / demo; the demo does the same over HTTP)")
	status, page, err := stack.NewBrowser().Decide(ctx, link, "alice", true)
	if err != nil && !strings.Contains(page, "Already approved") {
		return fmt.Errorf("approving as alice: %w", err)
	}
	if status != 200 && status != 409 {
		return fmt.Errorf("approving as alice: HTTP %d", status)
	}
	fmt.Fprintln(out, "-- alice signs in at the IdP and approves on Mandate's consent page --")
	tp, trace = stack.NewTraceparent()
	res, err := stack.Call(ctx, cs, "get_order_status", map[string]any{"order_id": "A-1002"}, tp)
	if err != nil {
		return err
	}
	verdict := "ok   "
	if res.IsError {
		verdict = "ERROR"
	}
	fmt.Fprintf(out, "%-6s %-26s trace %s  %s %s\n", "alice", "get_order_status(A-1002)", trace[:12]+"…", verdict, oneLine(res.Text))
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 140 {
		s = s[:140] + "…"
	}
	return s
}
