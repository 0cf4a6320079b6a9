package exchange

import "testing"

// Migration 00002 rebuilds this key in SQL from audit records of version 1, so the format is
// part of the schema's history and must not change.
func TestReplayKeyFormat(t *testing.T) {
	if got, want := replayKey("cli_é", "j|1", "orders"), "eie|6:cli_é|3:j|1|orders"; got != want {
		t.Errorf("replayKey = %q, want %q", got, want)
	}
}
