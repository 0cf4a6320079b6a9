package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// The CLI explains itself: `mandate --help` lists every command with one line, a command
// group's --help lists its subcommands, and a leaf command's --help shows its flags, the
// variable each flag also reads, and the variables it reads that have no flag (secrets,
// which never come from flags).

// command is one top-level command, in the order `mandate --help` lists them.
type command struct {
	name, summary string
}

var commands = []command{
	{"serve", "run the server (the default command)"},
	{"migrate", "up | status | down: manage the database schema"},
	{"clients", "manage OAuth clients (MCP servers) over the admin API"},
	{"audiences", "manage audiences (downstream APIs) over the admin API"},
	{"grants", "manage delegation grants over the admin API"},
	{"grant-requests", "list grant requests, and approve or deny one as an admin"},
	{"keys", "list and rotate Mandate's signing keys over the admin API"},
	{"audit", "read the audit log over the admin API"},
	{"explain", "would an exchange be granted, and why? (asks the admin API; changes nothing)"},
	{"envelope", "keygen | mint: act as an MCP server from a shell (development)"},
	{"bench", "provision, load and measure a running Mandate's token exchange"},
	{"flood", "send requests that fail client authentication, to measure what they cost"},
	{"healthcheck", "probe /readyz (for container health checks)"},
	{"version", "print the version"},
	{"help", "show this help, or a command's: mandate help <command>"},
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, "Usage: mandate [command] [arguments] [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun \"mandate <command> --help\" for a command's flags and environment variables.\n"+
		"Every flag of serve also reads a MANDATE_* variable; secrets come only from variables.\n")
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help" || arg == "help"
}

// envVar is a variable a command reads that no flag stands for.
type envVar struct{ name, meaning string }

// printFlags writes fs's flags as "--name  usage (default) [VARIABLE]", then vars.
func printFlags(w io.Writer, fs *flag.FlagSet, envOf func(name string) string, vars []envVar) {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
	}
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		switch f.DefValue {
		case "", "false", "0", "0s", "[]":
		default:
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		env := ""
		if v := envOf(f.Name); v != "" {
			env = " [" + v + "]"
		}
		fmt.Fprintf(w, "  --%-22s %s%s%s\n", f.Name, f.Usage, def, env)
	})
	if len(vars) > 0 {
		fmt.Fprint(w, "\nEnvironment:\n")
		for _, v := range vars {
			fmt.Fprintf(w, "  %-30s %s\n", v.name, v.meaning)
		}
	}
}

// printGroup writes the help of a command with subcommands.
func printGroup(w io.Writer, group string, subs [][2]string) {
	fmt.Fprintf(w, "Usage: mandate %s <command> [arguments] [flags]\n\nCommands:\n", group)
	width := 0
	for _, s := range subs {
		width = max(width, len(s[0]))
	}
	for _, s := range subs {
		fmt.Fprintf(w, "  %-*s  %s\n", width, s[0], s[1])
	}
	fmt.Fprintf(w, "\nRun \"mandate %s <command> --help\" for a command's flags.\n", group)
}

// Variables shared by several commands.
var (
	serveEnv = []envVar{
		{"MANDATE_SECRET", "deployment secret, at least 32 characters: encrypts signing keys at rest, keys the client-secret hash (required with Postgres)"},
		{"MANDATE_SECRET_FILE", "read the deployment secret from this file instead"},
		{"MANDATE_BOOTSTRAP_ADMIN_SECRET", "at least 32 characters: the mandate-admin secret to create on a fresh store (default: generated and printed once)"},
		{"GOGC, GOMEMLIMIT", "override the garbage collector settings serve chooses (see README)"},
	}
	adminEnv = []envVar{
		{"MANDATE_ADMIN_CLIENT_ID", "admin client to act as (default mandate-admin)"},
		{"MANDATE_ADMIN_CLIENT_SECRET", "its secret, exchanged for a token with client_credentials"},
		{"MANDATE_ADMIN_TOKEN", "a bearer token to use as is, instead of the two above"},
		{"MANDATE_ISSUER", "where the token endpoint is (default http://localhost:8080)"},
	}
)

// adminVerbSummaries are one line per admin subcommand, for the group help.
var adminVerbSummaries = map[string][][2]string{
	"clients": {
		{"list", "list clients"}, {"get ID", "show a client"}, {"create", "register a client (prints its secret once)"},
		{"update ID", "change a client"}, {"delete ID", "delete a client"}, {"rotate-secret ID", "issue a new secret [--grace 1h]"},
	},
	"audiences": {
		{"list", "list audiences"}, {"get ID", "show an audience"}, {"create --id ID", "register a downstream API"},
		{"update ID", "change an audience"}, {"delete ID", "delete an audience"},
	},
	"grants": {
		{"list", "list grants [--tenant --subject --client --audience --status]"}, {"get ID", "show a grant"},
		{"create", "create a delegation grant"}, {"revoke ID --reason TEXT", "revoke a grant"},
	},
	"grant-requests": {
		{"list", "list grant requests [--client --tenant --subject --status]"}, {"get ID", "show a grant request"},
		{"approve ID", "approve it as an admin: creates the grant, created_by admin:<you>"}, {"deny ID", "deny it"},
	},
	"keys":  {{"list", "list signing keys"}, {"rotate", "create the next signing key"}},
	"audit": {{"list", "read the audit log, newest first [--since --until --event --outcome --client ...]"}},
}

// summaryOf is the one-line summary of a top-level command.
func summaryOf(name string) string {
	for _, c := range commands {
		if c.name == name {
			return c.summary
		}
	}
	return ""
}

// titleLine is the first line of a leaf command's help.
func titleLine(w io.Writer, usage, summary string) {
	fmt.Fprintf(w, "Usage: %s\n", usage)
	if summary != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(summary))
	}
}
