package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func helpOf(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), args, func(string) string { return "" }, &out, &errOut); err != nil {
		t.Fatalf("mandate %s: %v (%s)", strings.Join(args, " "), err, errOut.String())
	}
	if out.Len() == 0 {
		t.Fatalf("mandate %s printed nothing", strings.Join(args, " "))
	}
	return out.String()
}

// TestHelp: the CLI explains itself. `mandate --help` lists every command with one line;
// every group's --help lists its subcommands; every leaf's --help shows its flags and the
// variables it reads.
func TestHelp(t *testing.T) {
	top := helpOf(t, "--help")
	for _, alias := range [][]string{{"-h"}, {"help"}} {
		if helpOf(t, alias...) != top {
			t.Errorf("mandate %s differs from mandate --help", alias[0])
		}
	}
	for _, c := range commands {
		if !strings.Contains(top, "  "+c.name+" ") {
			t.Errorf("mandate --help does not list %s", c.name)
		}
	}

	leaves := map[string][]string{ // command line → what its help must name
		"serve":           {"--database", "[MANDATE_DATABASE_URL]", "--issuer", "[MANDATE_ISSUER]", "MANDATE_SECRET", "MANDATE_BOOTSTRAP_ADMIN_SECRET"},
		"migrate up":      {"--database", "[MANDATE_DATABASE_URL]"},
		"migrate status":  {"--database"},
		"migrate down":    {"--database"},
		"envelope keygen": {"--out", "--kid"},
		"envelope mint":   {"--key", "--client-id", "--sub", "--tenant", "--agent", "[MANDATE_ISSUER]"},
		"bench":           {"--concurrency", "--duration", "[MANDATE_ADMIN_URL]", "MANDATE_ADMIN_CLIENT_SECRET"},
		"healthcheck":     {"--url"},
		"explain": {"--client", "--sub", "--tenant", "--agent", "--scopes", "--audience", "--resource", "--scope", "--at",
			"--key", "--json", "[MANDATE_ADMIN_URL]", "[MANDATE_ISSUER]", "MANDATE_ADMIN_CLIENT_SECRET", "MANDATE_ADMIN_TOKEN"},
	}
	for resource, verbs := range adminCommands {
		group := helpOf(t, resource, "--help")
		if helpOf(t, "help", resource) != group {
			t.Errorf("mandate help %s differs from mandate %s --help", resource, resource)
		}
		for verb := range verbs {
			if !strings.Contains(group, "  "+verb) {
				t.Errorf("mandate %s --help does not list %s", resource, verb)
			}
			leaves[resource+" "+verb] = []string{"--admin-url", "[MANDATE_ADMIN_URL]", "--json", "MANDATE_ADMIN_CLIENT_SECRET", "MANDATE_ADMIN_TOKEN"}
		}
	}
	for _, group := range []struct {
		name string
		subs []string
	}{{"migrate", []string{"up", "status", "down"}}, {"envelope", []string{"keygen", "mint"}}} {
		h := helpOf(t, group.name, "--help")
		for _, s := range group.subs {
			if !strings.Contains(h, "  "+s+" ") {
				t.Errorf("mandate %s --help does not list %s", group.name, s)
			}
		}
	}
	for line, want := range leaves {
		h := helpOf(t, append(strings.Fields(line), "--help")...)
		if !strings.HasPrefix(h, "Usage: mandate "+line) {
			t.Errorf("mandate %s --help starts %q", line, strings.SplitN(h, "\n", 2)[0])
		}
		for _, w := range want {
			if !strings.Contains(h, w) {
				t.Errorf("mandate %s --help does not mention %s:\n%s", line, w, h)
			}
		}
	}
}
