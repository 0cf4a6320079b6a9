package storagetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var replayCases = []testCase{
	{"MarkUsedOnce", testReplayOnce},
	{"ConcurrentMarkUsedOneWinner", testReplayRace},
	{"ExpiredMarkMayBeSetAgain", testReplayExpired},
	{"DeleteExpired", testReplayDeleteExpired},
}

func testReplayOnce(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	m := storage.ReplayMark{Key: "eie|cli_1|jti_1|orders_api", ExpiresAt: now.Add(5 * time.Minute)}
	mustDo(t, s.MarkUsed(ctx, m, now), "first MarkUsed")
	wantErr(t, s.MarkUsed(ctx, m, now), storage.ErrConflict, "second MarkUsed of a live mark")
	wantErr(t, s.MarkUsed(ctx, m, now.Add(time.Minute)), storage.ErrConflict, "MarkUsed of a live mark a minute later")
	// The same envelope for another audience is another key.
	other := storage.ReplayMark{Key: "eie|cli_1|jti_1|crm_api", ExpiresAt: m.ExpiresAt}
	mustDo(t, s.MarkUsed(ctx, other, now), "MarkUsed of another key")
}

func testReplayRace(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	m := storage.ReplayMark{Key: "eie|cli_1|jti_race|orders_api", ExpiresAt: now.Add(5 * time.Minute)}
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = s.MarkUsed(ctx, m, now)
		})
	}
	close(start)
	wg.Wait()
	won, lost := 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case errors.Is(err, storage.ErrConflict):
			lost++
		default:
			t.Errorf("MarkUsed racer %d: unexpected error %v", i, err)
		}
	}
	if won != 1 || lost != n-1 {
		t.Errorf("%d racers on one key: %d succeeded and %d got ErrConflict, want 1 and %d", n, won, lost, n-1)
	}
}

func testReplayExpired(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	key := "client_assertion|cli_1|jti_1"
	mustDo(t, s.MarkUsed(ctx, storage.ReplayMark{Key: key, ExpiresAt: now.Add(time.Minute)}, now), "first MarkUsed")
	// One microsecond before expiry the mark still holds; at its expiry it has expired (the
	// rule of storage.Grant.Status: expired once now >= ExpiresAt).
	wantErr(t, s.MarkUsed(ctx, storage.ReplayMark{Key: key, ExpiresAt: now.Add(time.Hour)}, now.Add(time.Minute-time.Microsecond)),
		storage.ErrConflict, "MarkUsed just before the mark expires")
	mustDo(t, s.MarkUsed(ctx, storage.ReplayMark{Key: key, ExpiresAt: now.Add(10 * time.Minute)}, now.Add(time.Minute)),
		"MarkUsed once the mark expired")
	// The new mark holds until its own expiry.
	wantErr(t, s.MarkUsed(ctx, storage.ReplayMark{Key: key, ExpiresAt: now.Add(time.Hour)}, now.Add(5*time.Minute)),
		storage.ErrConflict, "MarkUsed while the replaced mark is live")
	mustDo(t, s.MarkUsed(ctx, storage.ReplayMark{Key: key, ExpiresAt: now.Add(time.Hour)}, now.Add(11*time.Minute)),
		"MarkUsed after the replaced mark expired")
}

func testReplayDeleteExpired(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	marks := []storage.ReplayMark{
		{Key: "expired_long_ago", ExpiresAt: now.Add(-2 * time.Hour)},
		{Key: "expired_just_now", ExpiresAt: now.Add(-time.Second)},
		{Key: "live_short", ExpiresAt: now.Add(time.Minute)},
		{Key: "live_long", ExpiresAt: now.Add(time.Hour)},
	}
	for _, m := range marks {
		mustDo(t, s.MarkUsed(ctx, m, now.Add(-3*time.Hour)), "MarkUsed "+m.Key)
	}
	n, err := s.DeleteExpiredReplayMarks(ctx, now)
	mustDo(t, err, "DeleteExpiredReplayMarks")
	if n != 2 {
		t.Errorf("DeleteExpiredReplayMarks removed %d marks, want 2", n)
	}
	n, err = s.DeleteExpiredReplayMarks(ctx, now)
	mustDo(t, err, "DeleteExpiredReplayMarks again")
	if n != 0 {
		t.Errorf("second DeleteExpiredReplayMarks removed %d marks, want 0", n)
	}
	for _, m := range marks[2:] {
		wantErr(t, s.MarkUsed(ctx, m, now), storage.ErrConflict, "MarkUsed of "+m.Key+" after the sweep")
	}
	n, err = s.DeleteExpiredReplayMarks(ctx, now.Add(2*time.Hour))
	mustDo(t, err, "DeleteExpiredReplayMarks later")
	if n != 2 {
		t.Errorf("DeleteExpiredReplayMarks two hours on removed %d marks, want 2", n)
	}
}
