package throttle

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTracker(cfg Config) (*Tracker, *clock) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg.Now = c.Now
	return New(cfg), c
}

func TestBurstThenOnePerInterval(t *testing.T) {
	tr, c := newTracker(Config{Burst: 3, Interval: 10 * time.Second})
	for i := range 3 {
		a, ok, _ := tr.Allow("192.0.2.1")
		if !ok {
			t.Fatalf("refused after %d failures, burst 3", i)
		}
		a.Fail("token", "client_authentication_failed", "x")
	}
	_, ok, retry := tr.Allow("192.0.2.1")
	if ok || retry != 10*time.Second {
		t.Fatalf("after the burst: ok %v, retry after %s; want refused, 10s", ok, retry)
	}
	if _, ok, _ := tr.Allow("192.0.2.2"); !ok {
		t.Error("another address is refused")
	}
	c.Advance(4 * time.Second)
	if _, ok, retry := tr.Allow("192.0.2.1"); ok || retry != 6*time.Second {
		t.Errorf("4 s later: ok %v, retry after %s; want refused, 6s", ok, retry)
	}
	c.Advance(6 * time.Second)
	a, ok, _ := tr.Allow("192.0.2.1")
	if !ok {
		t.Fatal("an interval later the address may not try once more")
	}
	// Paid in advance: a second request in flight at the same time is refused...
	if _, ok, _ := tr.Allow("192.0.2.1"); ok {
		t.Error("two requests in flight on one refilled failure")
	}
	// ...and an attempt that does not fail gives it back.
	a.Done()
	a.Fail("token", "r", "") // after Done: nothing
	a, ok, _ = tr.Allow("192.0.2.1")
	if !ok {
		t.Fatal("an attempt that did not fail used up the refilled failure")
	}
	a.Fail("token", "client_authentication_failed", "x")
	a.Done() // after Fail: nothing
	if _, ok, _ := tr.Allow("192.0.2.1"); ok {
		t.Error("the refilled failure was used, yet the address may try again")
	}
}

// However many requests an address has in flight, it cannot fail more often than its
// bucket allows once it is tracked.
func TestInFlightRequestsCannotOverdraw(t *testing.T) {
	tr, _ := newTracker(Config{Burst: 5, Interval: time.Hour})
	tr.Fail("192.0.2.1", "token", "r", "") // tracked from now on
	var attempts []Attempt
	for range 50 {
		if a, ok, _ := tr.Allow("192.0.2.1"); ok {
			attempts = append(attempts, a)
		}
	}
	if len(attempts) != 4 {
		t.Fatalf("%d attempts let through at once, want the 4 failures left", len(attempts))
	}
	for i := range attempts {
		attempts[i].Fail("token", "r", "")
	}
	if _, ok, _ := tr.Allow("192.0.2.1"); ok {
		t.Error("allowed after the bucket was spent")
	}
}

func TestThrottlingDisabled(t *testing.T) {
	tr, _ := newTracker(Config{Burst: -1})
	for range 100 {
		tr.Fail("192.0.2.1", "token", "r", "")
	}
	if _, ok, _ := tr.Allow("192.0.2.1"); !ok {
		t.Error("refused with throttling disabled")
	}
	if a := tr.Due(true); len(a) != 1 || a[0].Failures != 100 {
		t.Errorf("aggregates %+v, want one of 100 failures", a)
	}
}

func TestOneAggregatePerAddressAndWindow(t *testing.T) {
	tr, c := newTracker(Config{Burst: 5, Interval: time.Second, MaxSamples: 3})
	start := c.Now()
	for i := range 40 {
		reason := "client_authentication_failed"
		if i%4 == 0 {
			reason = "malformed_request"
		}
		tr.Fail("192.0.2.1", []string{"token", "introspect"}[i%2], reason, fmt.Sprintf("id-%d", i%7))
		c.Advance(time.Second)
	}
	if due := tr.Due(false); len(due) != 0 {
		t.Fatalf("aggregates before the window closed: %+v", due)
	}
	c.Advance(time.Minute)
	due := tr.Due(false)
	if len(due) != 1 {
		t.Fatalf("%d aggregates, want 1", len(due))
	}
	a := due[0]
	if a.Addr != "192.0.2.1" || a.Failures != 40 || !a.Start.Equal(start) || !a.End.Equal(start.Add(39*time.Second)) {
		t.Errorf("aggregate %s: %d failures from %s to %s", a.Addr, a.Failures, a.Start, a.End)
	}
	if a.Reasons["malformed_request"] != 10 || a.Reasons["client_authentication_failed"] != 30 ||
		a.Endpoints["token"] != 20 || a.Endpoints["introspect"] != 20 {
		t.Errorf("reasons %v, endpoints %v", a.Reasons, a.Endpoints)
	}
	if !slices.Equal(a.SampleClientIDs, []string{"id-0", "id-1", "id-2"}) {
		t.Errorf("samples %q, want the first 3 distinct ids", a.SampleClientIDs)
	}
	if due := tr.Due(false); len(due) != 0 {
		t.Errorf("a second aggregate for the same window: %+v", due)
	}
	// Quiet, with its bucket full again, the address is forgotten.
	c.Advance(time.Hour)
	tr.Due(false)
	if n := tr.Len(); n != 0 {
		t.Errorf("%d addresses tracked after an hour of quiet, want 0", n)
	}
}

// Throttled requests are counted in the window, and alone they still make an aggregate.
func TestThrottledRequestsAreCounted(t *testing.T) {
	tr, c := newTracker(Config{Burst: 1, Interval: time.Hour})
	tr.Fail("192.0.2.1", "token", "r", "")
	c.Advance(2 * time.Minute)
	if due := tr.Due(false); len(due) != 1 || due[0].Failures != 1 {
		t.Fatalf("first window: %+v", due)
	}
	for range 7 {
		if _, ok, _ := tr.Allow("192.0.2.1"); ok {
			t.Fatal("allowed while throttled")
		}
	}
	c.Advance(2 * time.Minute)
	if due := tr.Due(false); len(due) != 1 || due[0].Failures != 0 || due[0].Throttled != 7 {
		t.Errorf("second window: %+v, want 7 throttled", due)
	}
}

// An attacker with many addresses cannot grow memory: the least recent are forgotten, their
// counts kept in one overflow aggregate, and no failure goes uncounted.
func TestAddressesAreBounded(t *testing.T) {
	tr, c := newTracker(Config{MaxAddresses: 100})
	for i := range 1000 {
		tr.Fail(fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), "token", "r", strings.Repeat("x", 10))
		if n := tr.Len(); n > 100 {
			t.Fatalf("%d addresses tracked, bound 100", n)
		}
	}
	c.Advance(time.Minute)
	due := tr.Due(false)
	total, overflow := 0, 0
	for _, a := range due {
		total += a.Failures
		if a.Addr == "" {
			overflow++
			if a.Addresses != 900 || a.Failures != 900 || len(a.SampleClientIDs) > DefaultMaxSamples {
				t.Errorf("overflow aggregate: %d addresses, %d failures, %d samples", a.Addresses, a.Failures, len(a.SampleClientIDs))
			}
		}
	}
	if len(due) != 101 || overflow != 1 || total != 1000 {
		t.Errorf("%d aggregates (%d overflow) counting %d failures; want 101 (1) counting 1000", len(due), overflow, total)
	}
}

func TestKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "192.0.2.1",
		"::ffff:192.0.2.1":     "192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"fe80::1%eth0":         "fe80::/64",
		"not an address":       "not an address",
		"2001:db8:1:3::1":      "2001:db8:1:3::/64",
	} {
		if got := Key(in); got != want {
			t.Errorf("Key(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	tr, _ := newTracker(Config{MaxAddresses: 50})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				addr := fmt.Sprintf("10.0.%d.%d", g, i%200)
				if a, ok, _ := tr.Allow(addr); ok {
					if i%3 == 0 {
						a.Done()
					} else {
						a.Fail("token", "r", "id")
					}
				}
				if i%100 == 0 {
					tr.Due(false)
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for _, a := range tr.Due(true) {
		total += a.Failures
	}
	if total == 0 || tr.Len() > 50 {
		t.Errorf("after concurrent use: %d failures left to report, %d addresses tracked", total, tr.Len())
	}
}
