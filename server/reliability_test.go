package server

import (
	"context"
	"errors"

	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// Replicas started together on an empty store agree on one signing key, publish only it, and
// each introspects and revokes every other's tokens (reliability run: replica C published only
// its own key, called A's and B's tokens inactive and "revoked" them recording nothing).
func TestReplicasStartingTogetherShareOneKey(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		const n = 3
		reps := startTogether(t, b.open(t, n, DefaultDatabaseTimeout), Options{})

		keys, err := reps[0].store.ListKeys(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 {
			t.Fatalf("%d replicas starting together stored %d signing keys, want 1", n, len(keys))
		}
		created := 0
		for i, r := range reps {
			if kids := r.jwksKIDs(t); !slices.Equal(kids, []string{keys[0].KID}) {
				t.Errorf("replica %d publishes %q, want only the store's key %s", i, kids, keys[0].KID)
			}
			if r.srv.BootstrapCreated {
				created++
			}
		}
		if created != 1 {
			t.Errorf("%d replicas created the bootstrap admin, want 1", created)
		}

		toks := make([]string, n)
		for i, r := range reps {
			toks[i] = r.adminToken(t)
		}
		for i := range reps {
			for j, r := range reps {
				if a := r.introspect(t, toks[i]); a.status != http.StatusOK || a.body["active"] != true {
					t.Errorf("replica %d introspecting replica %d's token: %d %s", j, i, a.status, a.raw)
				}
			}
		}
		for i := range reps {
			j := (i + 1) % n
			if a := reps[j].revoke(t, toks[i]); a.status != http.StatusOK {
				t.Fatalf("replica %d revoking replica %d's token: %d %s", j, i, a.status, a.raw)
			}
			if a := reps[i].introspect(t, toks[i]); a.body["active"] != false {
				t.Errorf("replica %d's token, revoked at replica %d, is still active at %d: %s", i, j, i, a.raw)
			}
		}
		recs, _, err := reps[0].store.ListAudit(t.Context(), storage.AuditFilter{Event: "revoke"})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != n {
			t.Errorf("%d revocations recorded, want %d", len(recs), n)
		}
	})
}

// A replica that meets a kid it has not loaded reloads before deciding: a key another replica
// made since this one's last reload (here: the first key of a store whose keys were all
// retired) is never a reason to call that replica's tokens inactive or leave them unrevoked.
func TestUnknownKIDIsReloadedBeforeDeciding(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		reps := startTogether(t, b.open(t, 2, DefaultDatabaseTimeout), Options{})
		a, bb := reps[0], reps[1]
		ctx := t.Context()
		old := a.srv.keys.ActiveKID()
		now := time.Now()
		if _, err := a.store.UpdateKey(ctx, old, func(k *storage.SigningKey) error {
			k.Status, k.RetiredAt, k.RemoveAt = storage.KeyRetired, now, now.Add(time.Hour)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := a.srv.keys.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		fresh := a.srv.keys.ActiveKID()
		if fresh == old || slices.Contains(bb.jwksKIDs(t), fresh) {
			t.Fatalf("setup: A signs with %s (was %s); B publishes %q", fresh, old, bb.jwksKIDs(t))
		}

		tok := a.adminToken(t)
		if got := bb.introspect(t, tok); got.status != http.StatusOK || got.body["active"] != true {
			t.Fatalf("B introspecting a token of A's new key: %d %s, want active", got.status, got.raw)
		}
		if !slices.Contains(bb.jwksKIDs(t), fresh) {
			t.Errorf("after the reload B still does not publish %s", fresh)
		}
		if got := bb.call(t, http.MethodGet, "/clients", tok, nil); got.status != http.StatusOK {
			t.Errorf("B's admin API with A's admin token: %d %s", got.status, got.raw)
		}
		if got := bb.revoke(t, tok); got.status != http.StatusOK {
			t.Fatalf("B revoking A's token: %d %s", got.status, got.raw)
		}
		if got := a.introspect(t, tok); got.body["active"] != false {
			t.Errorf("A's token revoked at B is still active at A: %s", got.raw)
		}
	})
}

// With the database held (an ACCESS EXCLUSIVE lock on the audit table on Postgres, another
// process's write transaction on SQLite), every request that needs it answers 503 within the
// database timeout instead of waiting as long as the lock is held; once it is released the
// same replica serves again, and no request that answered 503 left an issuance behind.
func TestHeldDatabaseAnswers503WithinTheDeadline(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		const timeout = time.Second
		// Generous: the machine is shared and noisy. A request that waited for the lock
		// would wait for the whole hold (holdFor below), far past this.
		const slack = 3 * time.Second
		const holdFor = 20 * time.Second
		r := startTogether(t, b.open(t, 1, timeout), Options{DatabaseTimeout: timeout})[0]
		admin := r.adminToken(t) // also caches the admin client

		release := b.hold(t)
		defer release()
		safety := time.AfterFunc(holdFor, release)
		defer safety.Stop()

		const n = 4
		answers := make([]answer, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { answers[i] = r.clientToken(t, "mandate-admin", testAdminSecret) })
		}
		wg.Wait()
		var worst time.Duration
		var statuses []int
		for i, a := range answers {
			statuses = append(statuses, a.status)
			worst = max(worst, a.took)
			if a.status != http.StatusServiceUnavailable || a.str("error") != "temporarily_unavailable" ||
				a.str("reason") != "storage_unavailable" || a.header.Get("Retry-After") == "" {
				t.Errorf("token request %d with the database held: %d %v %s, want 503 temporarily_unavailable, storage_unavailable, Retry-After",
					i, a.status, a.header.Get("Retry-After"), a.raw)
			}
			if a.took > timeout+slack {
				t.Errorf("token request %d answered after %s; the database timeout is %s", i, a.took, timeout)
			}
		}

		// The admin API: on Postgres its bearer check reads the held table; on SQLite a
		// change needs the held write lock.
		var adm answer
		if b.name == "postgres" {
			adm = r.call(t, http.MethodGet, "/clients", admin, nil)
			if in := r.introspect(t, admin); in.status != http.StatusServiceUnavailable || in.took > timeout+slack {
				t.Errorf("introspection with the database held: %d after %s: %s", in.status, in.took, in.raw)
			}
		} else {
			adm = r.call(t, http.MethodPost, "/audiences", admin, map[string]any{"id": "held"})
		}
		if adm.status != http.StatusServiceUnavailable || adm.header.Get("Content-Type") != "application/problem+json" ||
			adm.header.Get("Retry-After") == "" || adm.took > timeout+slack {
			t.Errorf("admin API with the database held: %d %q Retry-After %q after %s: %s",
				adm.status, adm.header.Get("Content-Type"), adm.header.Get("Retry-After"), adm.took, adm.raw)
		}
		worst = max(worst, adm.took)

		released := time.Now()
		release()
		var recovered time.Duration
		for {
			a := r.clientToken(t, "mandate-admin", testAdminSecret)
			if a.status == http.StatusOK {
				recovered = time.Since(released)
				break
			}
			if time.Since(released) > 10*time.Second {
				t.Fatalf("no recovery 10s after the lock was released: %d %s", a.status, a.raw)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s, database timeout %s: %d token requests while held answered %v, slowest answer %s; first 200 %s after release",
			b.name, timeout, n, statuses, worst.Round(time.Millisecond), recovered.Round(time.Millisecond))

		// Exactly the two 200s issued tokens: the 503s left no issuance behind.
		recs, _, err := r.store.ListAudit(t.Context(), storage.AuditFilter{Event: "client_credentials", Outcome: storage.OutcomeGranted})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 2 {
			t.Errorf("%d client_credentials issuances recorded, want 2 (the requests that answered 200)", len(recs))
		}
	})
}

// A disabled client is refused at once by every replica, not when each one's cache expires
// (reliability run: other replicas kept issuing for 4.9 s). The cache TTL here is an hour,
// so only the change feed can make the other replica see it.
func TestAdminChangesReachOtherReplicasAtOnce(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		reps := startTogether(t, b.open(t, 2, DefaultDatabaseTimeout), Options{CacheTTL: time.Hour})
		a, other := reps[0], reps[1]
		admin := a.adminToken(t)
		c := a.call(t, http.MethodPost, "/clients", admin, map[string]any{
			"client_id": "svc-batch", "grant_types": []string{"client_credentials"}, "allowed_scopes": []string{"s"},
		})
		if c.status != http.StatusCreated {
			t.Fatalf("create client: %d %s", c.status, c.raw)
		}
		sec := c.str("client_secret")
		if got := other.clientToken(t, "svc-batch", sec); got.status != http.StatusOK {
			t.Fatalf("the other replica before the change: %d %s", got.status, got.raw)
		}
		// Warm again right before the change, so the other replica's cached copy is fresh.
		if got := other.clientToken(t, "svc-batch", sec); got.status != http.StatusOK {
			t.Fatalf("the other replica before the change: %d %s", got.status, got.raw)
		}

		if got := a.call(t, http.MethodPatch, "/clients/svc-batch", admin, map[string]any{"disabled": true}); got.status != http.StatusOK {
			t.Fatalf("disable: %d %s", got.status, got.raw)
		}
		changed := time.Now()
		if got := a.clientToken(t, "svc-batch", sec); got.status != http.StatusUnauthorized {
			t.Fatalf("the replica that made the change still issues: %d %s", got.status, got.raw)
		}
		for {
			got := other.clientToken(t, "svc-batch", sec)
			if got.status == http.StatusUnauthorized {
				t.Logf("%s: the other replica refused the disabled client %s after the change committed (cache TTL 1h)",
					b.name, time.Since(changed).Round(time.Millisecond))
				break
			}
			if got.status != http.StatusOK {
				t.Fatalf("the other replica: %d %s", got.status, got.raw)
			}
			// Generous for a shared machine; without the change feed it would take the TTL.
			if time.Since(changed) > 5*time.Second {
				t.Fatalf("the other replica still issues to the disabled client %s after the change", time.Since(changed))
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// A key rotated through one replica is published by the others at once (Postgres: the
// change feed names the rotation), not at their next reload.
func TestKeyRotationReachesOtherReplicasAtOnce(t *testing.T) {
	b := postgresBackend(t)
	pgtestSkip(t)
	reps := startTogether(t, b.open(t, 2, DefaultDatabaseTimeout), Options{})
	a, other := reps[0], reps[1]
	got := a.call(t, http.MethodPost, "/keys/rotate", a.adminToken(t), nil)
	kid := got.str("kid")
	if got.status != http.StatusOK || kid == "" {
		t.Fatalf("rotate: %d %s", got.status, got.raw)
	}
	rotated := time.Now()
	for !slices.Contains(other.jwksKIDs(t), kid) {
		if time.Since(rotated) > 5*time.Second { // the periodic reload is every 10 s
			t.Fatalf("the other replica does not publish the rotated key %s %s after the rotation", kid, time.Since(rotated))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("the other replica published the rotated key %s after the rotation", time.Since(rotated).Round(time.Millisecond))
}

// A valid admin token is not "invalid" because the store is down: 503 (reliability run: 401
// "the bearer token is not valid" during the Postgres outage).
func TestAdminAPIWithTheStoreDownIs503(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		r := startTogether(t, b.open(t, 1, DefaultDatabaseTimeout), Options{})[0]
		admin := r.adminToken(t)
		if err := r.store.Close(); err != nil {
			t.Fatal(err)
		}
		got := r.call(t, http.MethodGet, "/clients", admin, nil)
		if got.status != http.StatusServiceUnavailable || got.header.Get("Content-Type") != "application/problem+json" ||
			got.header.Get("Retry-After") == "" {
			t.Fatalf("admin API with a valid token and the store down: %d %q %s", got.status, got.header.Get("Content-Type"), got.raw)
		}
	})
}

// countingWriter counts log lines.
type countingWriter struct {
	mu    sync.Mutex
	lines int
	last  string
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines += strings.Count(string(p), "\n")
	c.last = string(p)
	return len(p), nil
}

// During an outage every request fails the same way; the log says so once per interval with
// a count, instead of once per request (reliability run: ~27,000 ERROR lines in 8 s).
func TestOutageLogsStayReadable(t *testing.T) {
	b := sqliteBackend(t)
	stores := b.open(t, 1, DefaultDatabaseTimeout)
	raw, collapsed := &countingWriter{}, &countingWriter{}
	logger := slog.New(fanOut{
		slog.NewJSONHandler(raw, nil),
		CollapseRepeats(slog.NewJSONHandler(collapsed, nil), DefaultRepeatInterval),
	})
	r := startTogether(t, stores, Options{Logger: logger})[0]
	admin := r.adminToken(t)
	if err := r.store.Close(); err != nil {
		t.Fatal(err)
	}
	before := func() (int, int) {
		raw.mu.Lock()
		defer raw.mu.Unlock()
		collapsed.mu.Lock()
		defer collapsed.mu.Unlock()
		return raw.lines, collapsed.lines
	}
	r0, c0 := before()
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			switch i % 3 {
			case 0:
				r.clientToken(t, "mandate-admin", testAdminSecret)
			case 1:
				r.introspect(t, admin)
			default:
				r.call(t, http.MethodGet, "/clients", admin, nil)
			}
		})
	}
	wg.Wait()
	r1, c1 := before()
	t.Logf("%d failing requests during an outage: %d log lines unfiltered, %d with CollapseRepeats", n, r1-r0, c1-c0)
	if r1-r0 < n {
		t.Fatalf("setup: only %d lines for %d failing requests", r1-r0, n)
	}
	if c1-c0 > 10 {
		t.Errorf("%d lines with repeats collapsed, want a handful (one per kind of error); last: %s", c1-c0, collapsed.last)
	}
}

// fanOut sends each record to every handler.
type fanOut []slog.Handler

func (f fanOut) Enabled(ctx context.Context, l slog.Level) bool {
	return slices.ContainsFunc(f, func(h slog.Handler) bool { return h.Enabled(ctx, l) })
}

func (f fanOut) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (f fanOut) WithAttrs(as []slog.Attr) slog.Handler {
	out := make(fanOut, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(as)
	}
	return out
}

func (f fanOut) WithGroup(name string) slog.Handler {
	out := make(fanOut, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
}
