// Package throttle accounts for requests that fail client authentication, per remote
// address (SPEC §8). Such requests are anonymous: nobody is authenticated, so none may grow
// the store or slow the clients that do authenticate. A Tracker
//
//   - throttles an address that keeps failing: each address has a bucket of Burst failures,
//     refilled by one every Interval; while it is empty the address is refused before any
//     work is done, and told when to retry;
//   - aggregates what it saw per address and window (a minute): how many failures, for
//     which reasons, at which endpoints, and a bounded sample of the client ids claimed, for
//     at most one audit record per address per window;
//   - keeps at most MaxAddresses addresses in memory. When it is full, the address that
//     failed least recently is forgotten, its counts folded into one overflow aggregate, so
//     an attacker with many addresses cannot grow memory (or the audit log) without bound.
//
// IPv6 addresses are tracked by their /64, the block one host usually holds. The state is
// this process's: each replica throttles on its own.
//
// It imports only the standard library.
package throttle

import (
	"container/list"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Defaults of Config.
const (
	DefaultBurst        = 20
	DefaultInterval     = 6 * time.Second
	DefaultMaxAddresses = 10000
	DefaultWindow       = time.Minute
	DefaultMaxSamples   = 5
)

// Config tunes a Tracker. Zero values take the defaults.
type Config struct {
	// Burst is how many failures in a row an address may make before it is throttled.
	// Negative disables throttling (failures are still aggregated).
	Burst int
	// Interval refills one failure: a throttled address may fail once more per Interval.
	Interval time.Duration
	// MaxAddresses bounds the addresses tracked at once.
	MaxAddresses int
	// Window is how long one aggregate covers (at most one per address per window).
	Window time.Duration
	// MaxSamples bounds the claimed client ids kept per aggregate.
	MaxSamples int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Aggregate is what one address (or, for the overflow aggregate, every address forgotten
// while the Tracker was full) did in one window.
type Aggregate struct {
	// Addr is the address, or its /64 for IPv6; "" for the overflow aggregate.
	Addr string
	// Start and End bound the window: the first and the last event counted.
	Start, End time.Time
	// Failures counts failed requests; Throttled the requests refused without being tried.
	Failures, Throttled int
	// Reasons and Endpoints count failures by the reason they were refused for and by the
	// endpoint that refused them (both small, fixed sets chosen by the caller).
	Reasons, Endpoints map[string]int
	// SampleClientIDs are the first distinct client ids claimed, at most MaxSamples.
	SampleClientIDs []string
	// Addresses counts the addresses folded into the overflow aggregate (0 otherwise).
	Addresses int
}

func (a *Aggregate) empty() bool { return a.Failures == 0 && a.Throttled == 0 }

func (a *Aggregate) add(b *Aggregate, maxSamples int) {
	if b.empty() {
		return
	}
	if a.empty() || b.Start.Before(a.Start) {
		a.Start = b.Start
	}
	if b.End.After(a.End) {
		a.End = b.End
	}
	a.Failures += b.Failures
	a.Throttled += b.Throttled
	a.Reasons = addCounts(a.Reasons, b.Reasons)
	a.Endpoints = addCounts(a.Endpoints, b.Endpoints)
	for _, id := range b.SampleClientIDs {
		a.sample(id, maxSamples)
	}
}

func (a *Aggregate) note(now time.Time) {
	if a.empty() {
		a.Start = now
	}
	a.End = now
}

func (a *Aggregate) sample(id string, max int) {
	if id == "" || len(a.SampleClientIDs) >= max {
		return
	}
	for _, s := range a.SampleClientIDs {
		if s == id {
			return
		}
	}
	a.SampleClientIDs = append(a.SampleClientIDs, id)
}

func addCounts(into, from map[string]int) map[string]int {
	if len(from) == 0 {
		return into
	}
	if into == nil {
		into = make(map[string]int, len(from))
	}
	for k, n := range from {
		into[k] += n
	}
	return into
}

// entry is one tracked address.
type entry struct {
	key    string
	tokens float64   // failures the address may still make
	filled time.Time // when tokens was last brought up to date
	agg    Aggregate // the open window
	elem   *list.Element
}

// Tracker is safe for concurrent use.
type Tracker struct {
	cfg Config

	mu       sync.Mutex
	addrs    map[string]*entry
	lru      *list.List // of *entry, most recent failure in front
	overflow Aggregate
}

// New returns a Tracker.
func New(cfg Config) *Tracker {
	if cfg.Burst == 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxAddresses <= 0 {
		cfg.MaxAddresses = DefaultMaxAddresses
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxSamples <= 0 {
		cfg.MaxSamples = DefaultMaxSamples
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Tracker{cfg: cfg, addrs: map[string]*entry{}, lru: list.New()}
}

// Key is the address a request is tracked under: the IP, or its /64 for IPv6. host is an
// IP address as net/http's RemoteAddr gives it, without the port.
func Key(host string) string {
	if !strings.Contains(host, ":") {
		return host // IPv4 (or not an address at all): as it is, without an allocation
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if ip = ip.Unmap(); ip.Is4() {
		return ip.String()
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p.String()
}

// Attempt is one request Allow let through. Exactly one of Fail and Done must follow (Done
// after Fail does nothing, so `defer a.Done()` is the way to use it).
type Attempt struct {
	t        *Tracker
	addr     string
	reserved bool // a failure was taken from the address's bucket in advance
	over     bool // Fail or Done was called
}

// Allow reports whether a request from addr (a Key) may be served now. When it may, the
// Attempt must be ended with Fail or Done. When it may not, Allow counts the refusal in
// addr's window and says how long until the address may try again.
//
// An address that has failed lately pays for each attempt in advance, and gets it back when
// the attempt does not fail: its requests in flight at once cannot overdraw the bucket.
func (t *Tracker) Allow(addr string) (a Attempt, ok bool, retryAfter time.Duration) {
	a = Attempt{t: t, addr: addr}
	if t.cfg.Burst < 0 {
		return a, true, 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.addrs[addr]
	if e == nil {
		return a, true, 0 // the common case: an address that has not failed lately
	}
	now := t.cfg.Now()
	t.refill(e, now)
	if e.tokens >= 1 {
		e.tokens--
		a.reserved = true
		return a, true, 0
	}
	e.agg.note(now)
	e.agg.Throttled++
	return a, false, time.Duration((1 - e.tokens) * float64(t.cfg.Interval))
}

// Done ends an attempt that did not fail: a failure paid in advance is given back.
func (a *Attempt) Done() {
	if a.over || a.t == nil {
		return
	}
	a.over = true
	if !a.reserved {
		return
	}
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.addrs[a.addr]; e != nil {
		e.tokens = min(e.tokens+1, float64(t.cfg.Burst))
	}
}

// Fail ends an attempt that failed, at endpoint, for reason, claiming clientID ("" when it
// claimed none; the caller cleans it for storage).
func (a *Attempt) Fail(endpoint, reason, clientID string) {
	if a.over || a.t == nil {
		return
	}
	a.over = true
	a.t.fail(a.addr, endpoint, reason, clientID, a.reserved)
}

// Fail records a failed request from addr (a Key) that went through no Allow.
func (t *Tracker) Fail(addr, endpoint, reason, clientID string) {
	t.fail(addr, endpoint, reason, clientID, false)
}

func (t *Tracker) fail(addr, endpoint, reason, clientID string, paid bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	e := t.addrs[addr]
	if e == nil {
		if len(t.addrs) >= t.cfg.MaxAddresses {
			t.evictOldest()
		}
		e = &entry{key: addr, tokens: float64(t.cfg.Burst), filled: now}
		e.elem = t.lru.PushFront(e)
		t.addrs[addr] = e
		paid = false // forgotten since Allow: pay now
	} else {
		t.lru.MoveToFront(e.elem)
		t.refill(e, now)
	}
	if !paid {
		e.tokens = max(e.tokens-1, 0)
	}
	e.agg.note(now)
	e.agg.Failures++
	e.agg.Reasons = addCounts(e.agg.Reasons, map[string]int{reason: 1})
	e.agg.Endpoints = addCounts(e.agg.Endpoints, map[string]int{endpoint: 1})
	e.agg.sample(clientID, t.cfg.MaxSamples)
}

// Due returns the aggregates whose window has closed (every open one when all is set, at
// shutdown) and forgets the addresses that have nothing left to remember: no open window
// and a full bucket.
func (t *Tracker) Due(all bool) []Aggregate {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Now()
	closed := func(a *Aggregate) bool {
		return !a.empty() && (all || !now.Before(a.Start.Add(t.cfg.Window)))
	}
	var out []Aggregate
	for el := t.lru.Back(); el != nil; {
		e := el.Value.(*entry)
		prev := el.Prev()
		if closed(&e.agg) {
			a := e.agg
			a.Addr = e.key
			out = append(out, a)
			e.agg = Aggregate{}
		}
		t.refill(e, now)
		if e.agg.empty() && e.tokens >= float64(t.cfg.Burst) {
			t.lru.Remove(el)
			delete(t.addrs, e.key)
		}
		el = prev
	}
	if closed(&t.overflow) {
		out = append(out, t.overflow)
		t.overflow = Aggregate{}
	}
	return out
}

// Len is how many addresses are tracked.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.addrs)
}

func (t *Tracker) refill(e *entry, now time.Time) {
	if el := now.Sub(e.filled); el > 0 {
		e.tokens = min(float64(t.cfg.Burst), e.tokens+float64(el)/float64(t.cfg.Interval))
		e.filled = now
	}
}

// evictOldest forgets the address that failed least recently; what its open window counted
// goes to the overflow aggregate.
func (t *Tracker) evictOldest() {
	el := t.lru.Back()
	if el == nil {
		return
	}
	e := el.Value.(*entry)
	t.lru.Remove(el)
	delete(t.addrs, e.key)
	if !e.agg.empty() {
		t.overflow.add(&e.agg, t.cfg.MaxSamples)
		t.overflow.Addresses++
	}
}
