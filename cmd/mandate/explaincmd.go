package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"
)

const explainSummary = `Would this exchange be granted, and why?

  mandate explain --client ID --sub USER --tenant T --agent A --scopes "..."
                  (--audience ID | --resource URI) [--scope "..."] [--mode M]
                  [--at RFC3339] [--key FILE] [--json]

Asks the admin API (POST /admin/v1/explain) what the token endpoint would decide if client ID
exchanged this envelope now (or at --at), and why: each step of the decision in order, every
grant for the tenant and user and why it was or was not used, the scopes, the lifetime and the
claims the token would carry. Nothing is exchanged or used up.

The envelope is described with the flags of "mandate envelope mint". Without --key its claims
are sent unsigned, a what-if question (the signature step is skipped); with --key they are
signed with that private JWK, and the key and signature are checked too. --scope is what the
exchange requests (default: every effective scope); --scopes is what the envelope carries.

Example: would alice's agent get orders:write on orders_api?

  mandate explain --client webapp-prod --sub alice --tenant acme --agent support-agent \
    --scopes "orders:read orders:write" --audience orders_api --scope orders:write

Credentials as for the admin commands; a mandate:admin:read token is enough.`

// runExplain is `mandate explain`.
func runExplain(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var ef envelopeFlags
	var keyFile, audience, resource, scope, at, adminURL string
	var asJSON bool
	fe := newFlagSet("explain", stdout)
	fe.describe(explainSummary, adminEnv...)
	ef.bind(fe)
	fe.string(&audience, "audience", "", "", "the target audience id")
	fe.string(&resource, "resource", "", "", "the target as a resource URI (RFC 8707)")
	fe.string(&scope, "scope", "", "", "the scopes the exchange requests, space-separated (default: every effective scope)")
	fe.string(&at, "at", "", "", "evaluate at this time, RFC 3339 (default now); the envelope is made at it too")
	fe.string(&keyFile, "key", "", "", "sign the envelope with this private JWK (from `mandate envelope keygen`) instead of asking what-if")
	fe.string(&adminURL, "admin-url", "MANDATE_ADMIN_URL", "http://127.0.0.1:8081", "admin listener URL")
	fe.bool(&asJSON, "json", "", false, "print the API's JSON answer")
	if err := fe.parse(args, getenv); err != nil {
		return err
	}
	if err := ef.check("explain"); err != nil {
		return err
	}
	body := map[string]any{"client_id": ef.client}
	iat := time.Now()
	if at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return usagef("explain: --at %q is not an RFC 3339 time", at)
		}
		iat = t
		body["at"] = t.Format(time.RFC3339Nano)
	}
	claims := ef.claims(iat)
	claims.JTI = "explain-" + randomHex(8)
	if keyFile != "" {
		signer, err := signerFrom("explain", keyFile)
		if err != nil {
			return err
		}
		tok, err := signer.Sign(claims)
		if err != nil {
			return usageError{"explain: " + err.Error()}
		}
		body["subject_token"] = tok
	} else {
		body["claims"] = claims
	}
	for k, v := range map[string]string{"audience": audience, "resource": resource, "scope": scope} {
		if v != "" {
			body[k] = v
		}
	}

	c := &adminClient{base: strings.TrimRight(adminURL, "/") + "/admin/v1", getenv: getenv, http: &http.Client{Timeout: 30 * time.Second}}
	_, answer, err := c.do(ctx, http.MethodPost, "/explain", body)
	if err != nil {
		return err
	}
	if asJSON {
		var out bytes.Buffer
		if err := json.Indent(&out, answer, "", "  "); err != nil {
			return fmt.Errorf("admin API answered malformed JSON")
		}
		out.WriteByte('\n')
		_, err := stdout.Write(out.Bytes())
		return err
	}
	return showExplanation(stdout, answer)
}

// explanation is the part of the API's answer the table shows.
type explanation struct {
	Decision string `json:"decision"`
	Error    *struct {
		Error          string `json:"error"`
		Description    string `json:"error_description"`
		Reason         string `json:"reason"`
		UserMayConsent bool   `json:"user_may_consent"`
	} `json:"error"`
	At       string `json:"at"`
	ClientID string `json:"client_id"`
	WhatIf   bool   `json:"what_if"`
	Audience string `json:"audience"`
	Steps    []struct {
		Name, Outcome, Detail string
	} `json:"steps"`
	Grants []struct {
		Grant struct {
			ID        string   `json:"id"`
			Subject   string   `json:"subject"`
			AgentID   string   `json:"agent_id"`
			Audiences []string `json:"audiences"`
			Scopes    []string `json:"scopes"`
			Modes     []string `json:"modes"`
			Status    string   `json:"status"`
		} `json:"grant"`
		InForce bool     `json:"in_force"`
		Matched bool     `json:"matched"`
		Chosen  bool     `json:"chosen"`
		Why     []string `json:"why"`
	} `json:"grants"`
	GrantID         string          `json:"grant_id"`
	EffectiveScopes []string        `json:"effective_scopes"`
	Scopes          []string        `json:"scopes"`
	ExpiresIn       int             `json:"expires_in"`
	Claims          json.RawMessage `json:"claims"`
}

// showExplanation prints the decision, the steps as a table, then the grants considered.
func showExplanation(w io.Writer, answer []byte) error {
	var x explanation
	if err := json.Unmarshal(answer, &x); err != nil {
		return fmt.Errorf("admin API answered malformed JSON")
	}
	asked := "at " + x.At
	if t, err := time.Parse(time.RFC3339, x.At); err == nil {
		asked = "at " + t.Format(time.RFC3339)
	}
	if x.WhatIf {
		asked += ", what-if (claims not signed)"
	}
	if x.Decision == "granted" {
		fmt.Fprintf(w, "GRANTED  a token for %s with scope %q for %d s", x.Audience, strings.Join(x.Scopes, " "), x.ExpiresIn)
		if x.GrantID != "" {
			fmt.Fprintf(w, " under grant %s", x.GrantID)
		}
		fmt.Fprintf(w, " (%s)\n", asked)
	} else if x.Error != nil {
		fmt.Fprintf(w, "REFUSED  %s (%s): %s (%s)\n", x.Error.Error, x.Error.Reason, x.Error.Description, asked)
		if x.Error.UserMayConsent {
			fmt.Fprintln(w, "         the user may grant this themselves: the answer names the grant request endpoint")
		}
	}

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tOUTCOME\tDETAIL")
	for _, s := range x.Steps {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Outcome, cell(s.Detail))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(x.Grants) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "GRANT\tSUBJECT\tAGENT\tAUDIENCES\tSCOPES\tMODES\tSTATUS\tUSED\tWHY")
		for _, g := range x.Grants {
			used := "no"
			switch {
			case g.Chosen:
				used = "CHOSEN"
			case g.Matched:
				used = "matches"
			case !g.InForce:
				used = "not in force"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Grant.ID, cell(g.Grant.Subject), cell(g.Grant.AgentID),
				cell(anyList(g.Grant.Audiences)), cell(anyList(g.Grant.Scopes)), cell(anyList(g.Grant.Modes)),
				g.Grant.Status, used, cell(strings.Join(g.Why, "; ")))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if x.Decision == "granted" {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "effective scopes\t%s\n", cell(anyList(x.EffectiveScopes)))
		fmt.Fprintf(tw, "issued scopes\t%s\n", cell(anyList(x.Scopes)))
		fmt.Fprintf(tw, "lifetime\t%d s\n", x.ExpiresIn)
		fmt.Fprintf(tw, "token claims\t%s\n", cell(string(x.Claims)))
		return tw.Flush()
	}
	return nil
}

func anyList(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
