package main

// The admin commands: `mandate <resource> <verb> [arguments] [flags]`, a thin client of the
// admin REST API (/admin/v1, api/openapi.yaml). They never touch the store: what an admin can
// do from the shell is exactly what the API allows, validated and audited the same way.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// adminCmd is one resource verb.
type adminCmd struct {
	args string // positional arguments, for usage ("" or "ID")
	// flags registers the command's flags and returns what builds its request.
	flags func(fs *flag.FlagSet) func(c *cmdLine) (method, path string, body any, err error)
	// show prints a successful answer as a table.
	show func(w io.Writer, body []byte) error
}

// cmdLine is a parsed command line.
type cmdLine struct {
	pos []string
	set map[string]bool // flags given explicitly
}

func (c *cmdLine) id() string { return url.PathEscape(c.pos[0]) }

var adminCommands = map[string]map[string]adminCmd{
	"clients": {
		"list":          listCmd("/clients", clientColumns),
		"get":           getCmd("/clients/", clientFields),
		"create":        {flags: clientFlags(true), show: showObject(clientFields)},
		"update":        {args: "ID", flags: clientFlags(false), show: showObject(clientFields)},
		"delete":        deleteCmd("/clients/"),
		"rotate-secret": {args: "ID", flags: rotateSecretFlags, show: showObject([]string{"client_secret", "previous_secret_expires_at"})},
	},
	"audiences": {
		"list":   listCmd("/audiences", audienceColumns),
		"get":    getCmd("/audiences/", audienceFields),
		"create": {flags: audienceFlags(true), show: showObject(audienceFields)},
		"update": {args: "ID", flags: audienceFlags(false), show: showObject(audienceFields)},
		"delete": deleteCmd("/audiences/"),
	},
	"grants": {
		"list":   {flags: grantListFlags, show: showList(grantColumns)},
		"get":    getCmd("/grants/", grantFields),
		"create": {flags: grantCreateFlags, show: showObject(grantFields)},
		"revoke": {args: "ID", flags: grantRevokeFlags, show: showObject(grantFields)},
	},
	"grant-requests": {
		"list":    {flags: grantRequestListFlags, show: showList(grantRequestColumns)},
		"get":     getCmd("/grant-requests/", grantRequestFields),
		"approve": {args: "ID", flags: decide("approve"), show: showDecided},
		"deny":    {args: "ID", flags: decide("deny"), show: showDecided},
	},
	"keys": {
		"list":   listCmd("/keys", keyColumns),
		"rotate": {flags: fixed("POST", "/keys/rotate"), show: showObject(keyFields)},
	},
	"audit": {
		"list": {flags: auditListFlags, show: showList(auditColumns)},
	},
}

// runAdmin runs `mandate <resource> <verb> ...`; args starts with the resource.
func runAdmin(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		printUsage(stderr)
		return usagef("admin: name a resource")
	}
	verbs, ok := adminCommands[args[0]]
	if !ok {
		printUsage(stderr)
		return usagef("unknown resource %q", args[0])
	}
	resource, rest := args[0], args[1:]
	if len(rest) > 0 && isHelp(rest[0]) {
		printGroup(stdout, resource, adminVerbSummaries[resource])
		return nil
	}
	verb := "list"
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		verb, rest = rest[0], rest[1:]
	}
	cmd, ok := verbs[verb]
	if !ok {
		printGroup(stderr, resource, adminVerbSummaries[resource])
		return usagef("unknown command %q for %s", verb, resource)
	}

	name := "mandate " + resource + " " + verb
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as usage errors; -h prints below
	adminURL := fs.String("admin-url", envOr(getenv, "MANDATE_ADMIN_URL", "http://127.0.0.1:8081"), "admin listener URL")
	asJSON := fs.Bool("json", false, "print the API's JSON answer")
	build := cmd.flags(fs)
	fs.Usage = func() {
		var summary string
		for _, v := range adminVerbSummaries[resource] {
			if strings.Fields(v[0])[0] == verb {
				summary = strings.ToUpper(v[1][:1]) + v[1][1:] + ", over the admin API."
			}
		}
		titleLine(stdout, name+" "+cmd.args+strings.Repeat(" ", min(len(cmd.args), 1))+"[flags]", summary)
		printFlags(stdout, fs, func(f string) string {
			if f == "admin-url" {
				return "MANDATE_ADMIN_URL"
			}
			return ""
		}, adminEnv)
	}
	line, err := parseInterleaved(fs, rest)
	if err != nil {
		return err
	}
	if want := len(strings.Fields(cmd.args)); len(line.pos) != want {
		if want == 0 {
			return usagef("%s: unexpected argument %q", name, line.pos[0])
		}
		return usagef("%s: needs %s", name, cmd.args)
	}
	method, path, body, err := build(line)
	if err != nil {
		return err
	}

	c := &adminClient{base: strings.TrimRight(*adminURL, "/") + "/admin/v1", getenv: getenv, http: &http.Client{Timeout: 30 * time.Second}}
	status, answer, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	if status == http.StatusNoContent {
		if !*asJSON {
			fmt.Fprintf(stdout, "%s %s: done\n", resource, verb)
		}
		return nil
	}
	if *asJSON {
		var out bytes.Buffer
		if err := json.Indent(&out, answer, "", "  "); err != nil {
			return fmt.Errorf("admin API answered malformed JSON")
		}
		out.WriteByte('\n')
		_, err := stdout.Write(out.Bytes())
		return err
	}
	if err := cmd.show(stdout, answer); err != nil {
		return err
	}
	if resource == "clients" && (verb == "create" || verb == "rotate-secret") && bytes.Contains(answer, []byte(`"client_secret"`)) {
		fmt.Fprintln(stderr, "The client secret is shown only now: store it safely.")
	}
	var list struct {
		NextCursor string `json:"next_cursor"`
	}
	if json.Unmarshal(answer, &list) == nil && list.NextCursor != "" {
		fmt.Fprintf(stderr, "More: add --cursor %s\n", list.NextCursor)
	}
	return nil
}

// parseInterleaved parses flags wherever they stand among the positional arguments, so
// `mandate clients get web --json` works as well as `mandate clients get --json web`.
func parseInterleaved(fs *flag.FlagSet, args []string) (*cmdLine, error) {
	line := &cmdLine{set: map[string]bool{}}
	for {
		if err := parseFlagsOnly(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			line.pos = append(line.pos, args[1:]...)
			break
		}
		line.pos = append(line.pos, args[0])
		args = args[1:]
	}
	fs.Visit(func(f *flag.Flag) { line.set[f.Name] = true })
	return line, nil
}

func parseFlagsOnly(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return errHelp
	}
	if err != nil {
		return usageError{err.Error()}
	}
	return nil
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

// ---------------------------------------------------------------------------------------------
// HTTP

type adminClient struct {
	base   string
	getenv func(string) string
	http   *http.Client
}

// do sends one API call with a bearer token and returns the status and body of a 2xx
// answer; any other answer becomes an error that spells out its problem document.
func (c *adminClient) do(ctx context.Context, method, path string, body any) (int, []byte, error) {
	token, err := c.token(ctx)
	if err != nil {
		return 0, nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, nil, usagef("bad --admin-url: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("admin API: reading the answer: %w", err)
	}
	if res.StatusCode/100 != 2 {
		return 0, nil, problemError(res.StatusCode, answer)
	}
	return res.StatusCode, answer, nil
}

// problemError words an RFC 9457 answer for a terminal.
func problemError(status int, body []byte) error {
	var p struct {
		Title  string `json:"title"`
		Detail string `json:"detail"`
		Errors []struct {
			Field   string `json:"field"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &p) != nil || p.Title == "" {
		return fmt.Errorf("admin API: %d %s", status, http.StatusText(status))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "admin API: %d %s", status, p.Title)
	if p.Detail != "" {
		fmt.Fprintf(&b, ": %s", p.Detail)
	}
	for _, e := range p.Errors {
		fmt.Fprintf(&b, "\n  %s: %s", e.Field, e.Message)
	}
	return errors.New(b.String())
}

// token returns MANDATE_ADMIN_TOKEN, or gets one with client_credentials from the issuer.
func (c *adminClient) token(ctx context.Context) (string, error) {
	if t := c.getenv("MANDATE_ADMIN_TOKEN"); t != "" {
		return t, nil
	}
	id := envOr(c.getenv, "MANDATE_ADMIN_CLIENT_ID", "mandate-admin")
	sec := c.getenv("MANDATE_ADMIN_CLIENT_SECRET")
	if sec == "" {
		return "", usagef("set MANDATE_ADMIN_CLIENT_SECRET (the admin client's secret) or MANDATE_ADMIN_TOKEN")
	}
	issuer := strings.TrimRight(envOr(c.getenv, "MANDATE_ISSUER", "http://localhost:8080"), "/")
	form := url.Values{"grant_type": {"client_credentials"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, issuer+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", usagef("bad MANDATE_ISSUER: %v", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	// RFC 6749 §2.3.1: form-encode the credentials before Basic encoding.
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(sec))
	res, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("token endpoint at %s: %w", issuer, err)
	}
	defer res.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&tok); err != nil {
		return "", fmt.Errorf("token endpoint at %s answered %d without JSON", issuer, res.StatusCode)
	}
	if res.StatusCode != http.StatusOK || tok.AccessToken == "" {
		msg := tok.Error
		if tok.Description != "" {
			msg += ": " + tok.Description
		}
		return "", fmt.Errorf("getting an admin token as %s: %d %s", id, res.StatusCode, msg)
	}
	return tok.AccessToken, nil
}

// ---------------------------------------------------------------------------------------------
// Commands

func fixed(method, path string) func(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	return func(*flag.FlagSet) func(*cmdLine) (string, string, any, error) {
		return func(*cmdLine) (string, string, any, error) { return method, path, nil, nil }
	}
}

func listCmd(path string, cols []column) adminCmd {
	return adminCmd{
		flags: func(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
			if path == "/keys" {
				return func(*cmdLine) (string, string, any, error) { return "GET", path, nil, nil }
			}
			q := queryFlags(fs, pageFlags)
			return func(c *cmdLine) (string, string, any, error) { return "GET", path + q(c), nil, nil }
		},
		show: showList(cols),
	}
}

func getCmd(prefix string, fields []string) adminCmd {
	return adminCmd{args: "ID", flags: func(*flag.FlagSet) func(*cmdLine) (string, string, any, error) {
		return func(c *cmdLine) (string, string, any, error) { return "GET", prefix + c.id(), nil, nil }
	}, show: showObject(fields)}
}

func deleteCmd(prefix string) adminCmd {
	return adminCmd{args: "ID", flags: func(*flag.FlagSet) func(*cmdLine) (string, string, any, error) {
		return func(c *cmdLine) (string, string, any, error) { return "DELETE", prefix + c.id(), nil, nil }
	}}
}

// queryParam maps a flag to a query parameter.
type queryParam struct{ flag, param, usage string }

var pageFlags = []queryParam{
	{"limit", "limit", "page size (1-500)"},
	{"cursor", "cursor", "the cursor a previous page printed"},
}

func queryFlags(fs *flag.FlagSet, params []queryParam) func(*cmdLine) string {
	vals := make([]*string, len(params))
	for i, p := range params {
		vals[i] = fs.String(p.flag, "", p.usage)
	}
	return func(c *cmdLine) string {
		q := url.Values{}
		for i, p := range params {
			if c.set[p.flag] {
				q.Set(p.param, *vals[i])
			}
		}
		if len(q) == 0 {
			return ""
		}
		return "?" + q.Encode()
	}
}

func grantListFlags(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	q := queryFlags(fs, append([]queryParam{
		{"tenant", "tenant", "only this tenant"},
		{"subject", "subject", "only this subject (* for tenant-wide grants)"},
		{"client", "client_id", "only this client"},
		{"audience", "audience", "only grants covering this audience"},
		{"status", "status", "active, revoked or expired"},
	}, pageFlags...))
	return func(c *cmdLine) (string, string, any, error) { return "GET", "/grants" + q(c), nil, nil }
}

func grantRequestListFlags(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	q := queryFlags(fs, append([]queryParam{
		{"client", "client_id", "only this client's requests"},
		{"tenant", "tenant", "only this tenant"},
		{"subject", "subject", "only requests to this user"},
		{"status", "status", "pending, approved, denied or expired"},
	}, pageFlags...))
	return func(c *cmdLine) (string, string, any, error) { return "GET", "/grant-requests" + q(c), nil, nil }
}

// decide is grant-requests approve|deny: the access-request workflow, as an admin.
func decide(verb string) func(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	return func(*flag.FlagSet) func(*cmdLine) (string, string, any, error) {
		return func(c *cmdLine) (string, string, any, error) {
			return "POST", "/grant-requests/" + c.id() + "/" + verb, nil, nil
		}
	}
}

// showDecided prints a decided request, then the grant an approval created.
func showDecided(w io.Writer, body []byte) error {
	var d struct {
		Request json.RawMessage `json:"request"`
		Grant   json.RawMessage `json:"grant"`
	}
	if err := json.Unmarshal(body, &d); err != nil || d.Request == nil {
		return fmt.Errorf("admin API answered malformed JSON")
	}
	if err := showObject(grantRequestFields)(w, d.Request); err != nil {
		return err
	}
	if d.Grant == nil {
		return nil
	}
	fmt.Fprintln(w, "\ngrant:")
	return showObject(grantFields)(w, d.Grant)
}

func auditListFlags(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	q := queryFlags(fs, append([]queryParam{
		{"since", "since", "from this time on (RFC 3339)"},
		{"until", "until", "before this time (RFC 3339)"},
		{"event", "event", "token_exchange, client_credentials, revoke, admin.*, ..."},
		{"outcome", "outcome", "granted, denied or error"},
		{"client", "client_id", "client id"},
		{"actor-sub", "actor_sub", "the user (actor.sub)"},
		{"agent", "agent_id", "agent id"},
		{"tenant", "tenant", "tenant"},
		{"audience", "audience", "audience id"},
		{"trace-id", "trace_id", "trace id"},
	}, pageFlags...))
	return func(c *cmdLine) (string, string, any, error) { return "GET", "/audit" + q(c), nil, nil }
}

// listFlag is a repeatable flag; an empty value given alone means the empty list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	if v != "" {
		*l = append(*l, v)
	} else if *l == nil {
		*l = []string{}
	}
	return nil
}

// secondsFlag reads whole seconds, as a number ("300") or a Go duration ("5m").
type secondsFlag int

func (s *secondsFlag) String() string { return strconv.Itoa(int(*s)) }
func (s *secondsFlag) Set(v string) error {
	if n, err := strconv.Atoi(v); err == nil {
		*s = secondsFlag(n)
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d%time.Second != 0 {
		return errors.New("want whole seconds, e.g. 300 or 5m")
	}
	*s = secondsFlag(d / time.Second)
	return nil
}

// bodyFlags collects flags that become members of a JSON body when given.
type bodyFlags struct {
	fs      *flag.FlagSet
	members []func(c *cmdLine, body map[string]any)
}

func (b *bodyFlags) str(flagName, member, usage string) {
	v := b.fs.String(flagName, "", usage)
	b.members = append(b.members, func(c *cmdLine, body map[string]any) {
		if c.set[flagName] {
			body[member] = *v
		}
	})
}

func (b *bodyFlags) list(flagName, member, usage string) {
	var v listFlag
	b.fs.Var(&v, flagName, usage+" (repeatable; --"+flagName+"= alone clears)")
	b.members = append(b.members, func(c *cmdLine, body map[string]any) {
		if c.set[flagName] {
			body[member] = []string(v)
		}
	})
}

func (b *bodyFlags) seconds(flagName, member, usage string) {
	var v secondsFlag
	b.fs.Var(&v, flagName, usage+" (seconds, or a duration like 5m)")
	b.members = append(b.members, func(c *cmdLine, body map[string]any) {
		if c.set[flagName] {
			body[member] = int(v)
		}
	})
}

func (b *bodyFlags) boolean(flagName, member, usage string) {
	v := b.fs.Bool(flagName, false, usage)
	b.members = append(b.members, func(c *cmdLine, body map[string]any) {
		if c.set[flagName] {
			body[member] = *v
		}
	})
}

func (b *bodyFlags) build(c *cmdLine) map[string]any {
	body := map[string]any{}
	for _, m := range b.members {
		m(c, body)
	}
	return body
}

func clientFlags(create bool) func(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	return func(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
		b := &bodyFlags{fs: fs}
		if create {
			b.str("id", "client_id", "client id (generated when absent)")
		}
		b.str("name", "name", "display name")
		b.str("auth-method", "token_endpoint_auth_method", "client_secret_basic, client_secret_post or private_key_jwt")
		b.str("jwks-uri", "jwks_uri", "https URL of the client's JWK Set")
		jwksFile := fs.String("jwks-file", "", "file holding the client's public JWK Set (JSON)")
		b.list("grant-type", "grant_types", "urn:ietf:params:oauth:grant-type:token-exchange or client_credentials")
		b.list("tenant", "allowed_tenants", "allowed tenant")
		b.list("audience", "allowed_audiences", "allowed audience")
		b.list("scope", "allowed_scopes", "allowed scope")
		b.list("mode", "allowed_modes", "allowed mode: on_behalf_of, service_identity, restricted_user")
		b.list("service-actor", "service_actors", "actor.sub the client may present as a service actor (needs --tenant)")
		b.seconds("max-envelope-lifetime", "max_envelope_lifetime", "longest envelope lifetime, at most 3600")
		b.seconds("max-token-ttl", "max_token_ttl", "longest token lifetime")
		b.boolean("disabled", "disabled", "disable the client (--disabled=false enables it)")
		return func(c *cmdLine) (string, string, any, error) {
			body := b.build(c)
			if c.set["jwks-file"] {
				raw, err := os.ReadFile(*jwksFile)
				if err != nil {
					return "", "", nil, usagef("--jwks-file: %v", err)
				}
				if !json.Valid(raw) {
					return "", "", nil, usagef("--jwks-file: %s is not JSON", *jwksFile)
				}
				body["jwks"] = json.RawMessage(raw)
			}
			if create {
				return "POST", "/clients", body, nil
			}
			if len(body) == 0 {
				return "", "", nil, usagef("clients update: give at least one flag to change")
			}
			return "PATCH", "/clients/" + c.id(), body, nil
		}
	}
}

func rotateSecretFlags(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	b := &bodyFlags{fs: fs}
	b.seconds("grace", "grace_period", "how long the old secret keeps working (default 0: it stops now)")
	return func(c *cmdLine) (string, string, any, error) {
		var body any
		if m := b.build(c); len(m) > 0 {
			body = m
		}
		return "POST", "/clients/" + c.id() + "/secret", body, nil
	}
}

func audienceFlags(create bool) func(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	return func(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
		b := &bodyFlags{fs: fs}
		if create {
			b.str("id", "id", "audience id: the tokens' aud value (required)")
		}
		b.str("name", "name", "display name")
		b.list("resource", "resource_uris", "RFC 8707 resource URI naming this audience")
		b.list("scope", "scopes", "scope the audience defines")
		b.list("mode", "allowed_modes", "allowed mode: on_behalf_of, service_identity, restricted_user")
		b.seconds("token-ttl", "token_ttl", "token lifetime")
		b.str("user-consent", "user_consent", "allowed (users may grant it themselves) or admin_only")
		b.seconds("max-consent-duration", "max_consent_duration", "the longest grant a user may give")
		return func(c *cmdLine) (string, string, any, error) {
			body := b.build(c)
			if create {
				return "POST", "/audiences", body, nil
			}
			if len(body) == 0 {
				return "", "", nil, usagef("audiences update: give at least one flag to change")
			}
			return "PATCH", "/audiences/" + c.id(), body, nil
		}
	}
}

func grantCreateFlags(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	b := &bodyFlags{fs: fs}
	b.str("tenant", "tenant", "tenant (required)")
	b.str("subject", "subject", "user id, or * for every user of the tenant (required)")
	b.str("client", "client_id", "client id (required)")
	b.str("agent", "agent_id", "only this agent (default: any agent of the client)")
	b.list("audience", "audiences", "audience (required)")
	b.list("scope", "scopes", "scope (required)")
	b.list("mode", "modes", "mode (default on_behalf_of)")
	b.str("not-before", "not_before", "start, RFC 3339 (default now)")
	b.str("expires-at", "expires_at", "end, RFC 3339")
	expiresIn := fs.Duration("expires-in", 0, "end, from now (e.g. 720h); instead of --expires-at")
	return func(c *cmdLine) (string, string, any, error) {
		body := b.build(c)
		switch {
		case c.set["expires-in"] && c.set["expires-at"]:
			return "", "", nil, usagef("grants create: give --expires-at or --expires-in, not both")
		case c.set["expires-in"]:
			body["expires_at"] = time.Now().Add(*expiresIn).UTC().Format(time.RFC3339)
		}
		return "POST", "/grants", body, nil
	}
}

func grantRevokeFlags(fs *flag.FlagSet) func(*cmdLine) (string, string, any, error) {
	reason := fs.String("reason", "", "why (required; kept with the grant and in the audit log)")
	return func(c *cmdLine) (string, string, any, error) {
		if *reason == "" {
			return "", "", nil, usagef("grants revoke: --reason is required")
		}
		return "POST", "/grants/" + c.id() + "/revoke", map[string]any{"reason": *reason}, nil
	}
}

// ---------------------------------------------------------------------------------------------
// Tables

// column is one table column: a header and the JSON member it shows.
type column struct{ header, member string }

var (
	clientColumns       = []column{{"CLIENT_ID", "client_id"}, {"NAME", "name"}, {"AUTH", "token_endpoint_auth_method"}, {"GRANT_TYPES", "grant_types"}, {"DISABLED", "disabled"}, {"CREATED", "created_at"}}
	audienceColumns     = []column{{"ID", "id"}, {"NAME", "name"}, {"SCOPES", "scopes"}, {"RESOURCES", "resource_uris"}, {"MODES", "allowed_modes"}, {"TOKEN_TTL", "token_ttl"}}
	grantColumns        = []column{{"ID", "id"}, {"TENANT", "tenant"}, {"SUBJECT", "subject"}, {"CLIENT", "client_id"}, {"AUDIENCES", "audiences"}, {"SCOPES", "scopes"}, {"STATUS", "status"}, {"EXPIRES", "expires_at"}}
	grantRequestColumns = []column{{"ID", "id"}, {"STATUS", "status"}, {"TENANT", "tenant"}, {"SUBJECT", "subject"}, {"CLIENT", "client_id"}, {"AUDIENCES", "audiences"}, {"SCOPES", "scopes"}, {"EXPIRES", "expires_at"}}
	keyColumns          = []column{{"KID", "kid"}, {"ALG", "alg"}, {"STATUS", "status"}, {"CREATED", "created_at"}, {"ACTIVATES", "activates_at"}, {"RETIRED", "retired_at"}, {"REMOVE", "remove_at"}}
	auditColumns        = []column{{"TIME", "time"}, {"EVENT", "event"}, {"OUTCOME", "outcome"}, {"REASON", "reason"}, {"CLIENT", "client_id"}, {"ACTOR", "actor_sub"}, {"TENANT", "tenant"}, {"AUDIENCE", "audience"}, {"TRACE", "trace_id"}}

	clientFields = []string{"client_id", "client_secret", "name", "token_endpoint_auth_method", "grant_types", "jwks_uri", "jwks",
		"allowed_tenants", "allowed_audiences", "allowed_scopes", "allowed_modes", "service_actors", "max_envelope_lifetime", "max_token_ttl",
		"disabled", "previous_secret_expires_at", "created_at", "updated_at"}
	audienceFields = []string{"id", "name", "resource_uris", "scopes", "allowed_modes", "token_ttl", "user_consent", "max_consent_duration",
		"created_at", "updated_at"}
	grantRequestFields = []string{"id", "status", "tenant", "subject", "client_id", "agent_id", "audiences", "scopes", "modes",
		"duration", "purpose", "created_at", "expires_at", "decided_at", "decided_by", "grant_id"}
	grantFields = []string{"id", "status", "tenant", "subject", "client_id", "agent_id", "audiences", "scopes", "modes",
		"not_before", "expires_at", "created_by", "created_at", "revoked_at", "revoked_by", "revoke_reason"}
	keyFields = []string{"kid", "alg", "status", "created_at", "activates_at", "retired_at", "remove_at"}
)

func showList(cols []column) func(w io.Writer, body []byte) error {
	return func(w io.Writer, body []byte) error {
		var list struct {
			Items []map[string]any `json:"items"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			return fmt.Errorf("admin API answered malformed JSON")
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for i, c := range cols {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c.header)
		}
		fmt.Fprintln(tw)
		for _, item := range list.Items {
			for i, c := range cols {
				if i > 0 {
					fmt.Fprint(tw, "\t")
				}
				fmt.Fprint(tw, cell(item[c.member]))
			}
			fmt.Fprintln(tw)
		}
		return tw.Flush()
	}
}

// showObject prints one record as FIELD VALUE lines, in the given order; absent members are
// left out.
func showObject(fields []string) func(w io.Writer, body []byte) error {
	return func(w io.Writer, body []byte) error {
		var obj map[string]any
		if err := json.Unmarshal(body, &obj); err != nil {
			return fmt.Errorf("admin API answered malformed JSON")
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, f := range fields {
			if v, ok := obj[f]; ok {
				fmt.Fprintf(tw, "%s\t%s\n", f, cell(v))
			}
		}
		return tw.Flush()
	}
}

// cell formats a JSON value for a table: lists comma-joined, objects as compact JSON, and
// nothing that could break the table's lines.
func cell(v any) string {
	var s string
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		if x == "" {
			return "-"
		}
		s = x
	case bool:
		s = strconv.FormatBool(x)
	case float64:
		s = strconv.FormatFloat(x, 'f', -1, 64)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = cell(e)
		}
		s = strings.Join(parts, ",")
		if s == "" {
			return "-"
		}
	default:
		b, _ := json.Marshal(x)
		s = string(b)
	}
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' || r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
