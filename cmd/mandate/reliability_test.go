package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// The binary's own flags: --database-timeout bounds the wait for a SQLite file another
// process holds (busy_timeout included, which no context cuts short), and
// --log-repeat-interval turns a burst of one failure into one line.
func TestServeHeldDatabaseAnswers503WithinTheTimeoutAndLogsOnce(t *testing.T) {
	db := filepath.Join(t.TempDir(), "mandate.db")
	const timeout = 500 * time.Millisecond
	s := startE2E(t, map[string]string{"MANDATE_BOOTSTRAP_ADMIN_SECRET": e2eAdminSecret},
		"--database", db, "--database-timeout", timeout.String(), "--log-repeat-interval", "1h")

	// Another process takes the file's write lock and keeps it.
	other, err := sqlite.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	held, release, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- other.InTx(context.Background(), func(storage.Store) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	var once sync.Once
	unhold := func() {
		once.Do(func() {
			close(release)
			<-done
			other.Close()
		})
	}
	defer unhold()
	safety := time.AfterFunc(30*time.Second, unhold)
	defer safety.Stop()

	const n = 8
	var wg sync.WaitGroup
	replies := make([]reply, n)
	took := make([]time.Duration, n)
	for i := range n {
		wg.Go(func() {
			start := time.Now()
			replies[i] = s.post(t, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}},
				basicAuth("mandate-admin", e2eAdminSecret))
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i, r := range replies {
		if r.status != http.StatusServiceUnavailable || r.str("reason") != "storage_unavailable" || r.header.Get("Retry-After") == "" {
			t.Errorf("request %d with the file held: %d %s", i, r.status, r.raw)
		}
		// The default busy wait alone is 10 s; slack for a shared machine.
		if took[i] > timeout+3*time.Second {
			t.Errorf("request %d answered after %s with --database-timeout %s", i, took[i], timeout)
		}
	}
	unhold()
	if r := s.post(t, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, basicAuth("mandate-admin", e2eAdminSecret)); r.status != http.StatusOK {
		t.Fatalf("after the file was released: %d %s", r.status, r.raw)
	}

	// One line per kind of failure. A request either waited for its batch to be written
	// and ran out of time on its own (no answer within the timeout), or was in a batch
	// whose time ran out first (group commit): at most those two kinds, each logged once.
	byErr := map[string]int{}
	for _, line := range strings.Split(s.inst.Logs.String(), "\n") {
		var rec struct{ Msg, Level, Err string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "token request failed" {
			byErr[rec.Err]++
		}
	}
	if len(byErr) == 0 || len(byErr) > 2 {
		t.Errorf("%d failing requests logged %d kinds of \"token request failed\" lines, want 1 or 2: %v", n, len(byErr), byErr)
	}
	for err, lines := range byErr {
		if lines != 1 {
			t.Errorf("%d failing requests logged %q %d times within the repeat interval, want once", n, err, lines)
		}
	}
}
