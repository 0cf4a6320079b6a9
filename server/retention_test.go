package server

import (
	"slices"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// A replica removes the audit records past its retention as soon as it runs, and keeps the
// rest; with retention off it removes nothing. On Postgres the old records sit in the
// partition the migration left (a fresh log's history), which retention empties in batches.
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
			onBackends(t, func(t *testing.T, b backend) {
				store := b.open(t, 1, DefaultDatabaseTimeout)[0]
				ctx := t.Context()
				now := time.Now()
				for id, age := range map[string]time.Duration{"evt_new": time.Minute,
					"evt_9d": 9 * 24 * time.Hour, "evt_12d": 12 * 24 * time.Hour} {
					if err := store.AppendAudit(ctx, &storage.AuditRecord{ID: id, Time: now.Add(-age),
						Event: "admin.test", Outcome: storage.OutcomeGranted, ClientID: "retention"}); err != nil {
						t.Fatal(err)
					}
				}
				rep := startTogether(t, []storage.Store{store}, Options{AuditRetention: tc.retention})[0]
				select {
				case <-rep.srv.auditMaintained:
				case <-time.After(30 * time.Second):
					t.Fatal("the replica's first audit log maintenance did not end in 30s")
				}
				items, _, err := rep.store.ListAudit(ctx, storage.AuditFilter{ClientID: "retention"})
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, a := range items {
					got = append(got, a.ID)
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("audit records after the replica's maintenance: %v, want %v", got, tc.want)
				}
			})
		})
	}
}
