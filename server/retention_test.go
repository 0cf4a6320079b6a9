package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// The server removes the audit records past its retention as soon as it runs, and keeps the
// rest; with retention off it removes nothing.
func TestAuditRetention(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retention time.Duration
		want      []string
	}{
		{"10 days", 10 * 24 * time.Hour, []string{"evt_new", "evt_9d"}},
		{"off", -1, []string{"evt_new", "evt_9d", "evt_12d"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "m.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			master, _ := secret.NewMaster(strings.Repeat("s", 40))
			s, err := New(ctx, Options{Store: store, Master: master, Issuer: "http://mandate.test",
				AuditRetention: tc.retention})
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			for id, age := range map[string]time.Duration{"evt_new": time.Minute, "evt_9d": 9 * 24 * time.Hour, "evt_12d": 12 * 24 * time.Hour} {
				if err := store.AppendAudit(ctx, &storage.AuditRecord{ID: id, Time: now.Add(-age),
					Event: "admin.test", Outcome: storage.OutcomeGranted, ClientID: "retention"}); err != nil {
					t.Fatal(err)
				}
			}
			run, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); s.maintainAuditLog(run, time.Hour) }()
			var got []string
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				items, _, err := store.ListAudit(ctx, storage.AuditFilter{ClientID: "retention"})
				if err != nil {
					t.Fatal(err)
				}
				got = got[:0]
				for _, a := range items {
					got = append(got, a.ID)
				}
				if len(got) == len(tc.want) && tc.retention > 0 {
					break
				}
				if tc.retention < 0 && time.Now().After(deadline.Add(-9500*time.Millisecond)) {
					break // half a second: nothing is going to be removed
				}
			}
			stop()
			<-done
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("audit records after the server's first maintenance: %v, want %v", got, tc.want)
			}
		})
	}
}
