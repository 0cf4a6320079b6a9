package storagetest

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var changeCases = []testCase{
	{"AnnounceOnlyInTx", testAnnounceOnlyInTx},
	{"WatchSaysWhenWatching", testWatchStarts},
}

func testAnnounceOnlyInTx(t *testing.T, s storage.Store) {
	ctx := t.Context()
	if err := s.AnnounceChange(ctx, "admin.client.update"); err == nil {
		t.Errorf("AnnounceChange outside a transaction succeeded; it must fail (it could never be tied to a commit)")
	}
	err := s.InTx(ctx, func(tx storage.Store) error {
		if err := tx.CreateClient(ctx, minimalClient("cli_announced", testNow())); err != nil {
			return err
		}
		return tx.AnnounceChange(ctx, strings.Repeat("x", 3*storage.MaxChangeText))
	})
	mustDo(t, err, "InTx with an over-long AnnounceChange (clipped, not refused)")
}

func testWatchStarts(t *testing.T, s storage.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	heard := make(chan string, 16)
	done := make(chan error, 1)
	go func() { done <- s.WatchChanges(ctx, func(what string) { heard <- what }) }()
	select {
	case what := <-heard:
		if what != "" {
			t.Errorf("WatchChanges' first call said %q, want \"\" (anything before may have been missed)", what)
		}
	case err := <-done:
		t.Fatalf("WatchChanges returned before watching: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("WatchChanges did not say it was watching within 10s")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WatchChanges after its context ended = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("WatchChanges did not return within 10s of its context ending")
	}
}

// RunShared runs the cases that need two handles on one store, as two replicas (processes)
// have: open returns both, on a fresh, empty store, closed with t.Cleanup.
func RunShared(t *testing.T, open func(t *testing.T) (a, b storage.Store)) {
	for _, c := range []struct {
		name string
		fn   func(t *testing.T, a, b storage.Store)
	}{
		{"FirstKeyRace", raceFirstKey},
		{"ChangesReachOtherHandles", testChangesReachOthers},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a, b := open(t)
			c.fn(t, a, b)
		})
	}
}

// A change committed through a is heard through b; one rolled back is not.
func testChangesReachOthers(t *testing.T, a, b storage.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var mu sync.Mutex
	var heard []string
	watching := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- b.WatchChanges(ctx, func(what string) {
			mu.Lock()
			heard = append(heard, what)
			mu.Unlock()
			once.Do(func() { close(watching) })
		})
	}()
	select {
	case <-watching:
	case err := <-done:
		t.Fatalf("WatchChanges returned before watching: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("WatchChanges did not start within 10s")
	}
	mu.Lock()
	heard = nil
	mu.Unlock()

	errStop := errors.New("roll back")
	err := a.InTx(ctx, func(tx storage.Store) error {
		if err := tx.AnnounceChange(ctx, "rolled-back"); err != nil {
			return err
		}
		return errStop
	})
	wantErr(t, err, errStop, "InTx that rolls back")
	now := testNow()
	mustDo(t, a.InTx(ctx, func(tx storage.Store) error {
		if err := tx.CreateClient(ctx, minimalClient("cli_changed", now)); err != nil {
			return err
		}
		return tx.AnnounceChange(ctx, "admin.client.create")
	}), "InTx that announces a change")

	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := append([]string(nil), heard...)
		mu.Unlock()
		for _, w := range got {
			if w == "rolled-back" {
				t.Fatalf("a change announced in a rolled-back transaction was heard: %q", got)
			}
		}
		// "" is allowed: a backend that cannot tell what changed says so.
		if len(got) > 0 && (got[len(got)-1] == "admin.client.create" || got[len(got)-1] == "") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the other handle did not hear the committed change within 10s (heard %q)", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
