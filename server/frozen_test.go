package server

import (
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/postgres"
	"github.com/mandatehq/mandate/storage/postgres/pgtest"
)

// gate stops traffic while closed, as a process stopped with SIGSTOP does: connections are
// accepted (the kernel does that for a stopped server too) and bytes sent to it wait, but
// nothing comes back.
type gate struct {
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
}

func newGate() *gate {
	g := &gate{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gate) set(frozen bool) {
	g.mu.Lock()
	g.frozen = frozen
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *gate) pass() {
	g.mu.Lock()
	for g.frozen {
		g.cond.Wait()
	}
	g.mu.Unlock()
}

// freezableProxy forwards TCP connections to upstream through g.
func freezableProxy(t *testing.T, upstream string, g *gate) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		g.set(false)
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				g.pass()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
			if err != nil {
				dst.Close()
				src.Close()
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Add(2)
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return ln.Addr().String()
}

// With Postgres frozen (reliability run: SIGSTOP for 8 s, answers took up to 8.0 s) every
// request answers 503 within the database timeout, plus the grace a cancellation gets before
// its connection is dropped; once it thaws the same replica serves again.
func TestFrozenDatabaseAnswers503WithinTheDeadline(t *testing.T) {
	pgtestSkip(t)
	schema, schemaURL := pgtest.Schema(t)
	u, err := url.Parse(schemaURL)
	if err != nil {
		t.Fatal(err)
	}
	g := newGate()
	u.Host = freezableProxy(t, u.Host, g)
	st, err := postgres.Open(t.Context(), u.String(), postgres.Options{Schema: schema, MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if p, err := st.Migrations(); err != nil {
		t.Fatal(err)
	} else if _, err := p.Up(t.Context()); err != nil {
		t.Fatal(err)
	}

	const timeout = time.Second
	const slack = 3 * time.Second // a shared, noisy machine; a frozen wait would be holdFor
	const holdFor = 20 * time.Second
	r := startTogether(t, []storage.Store{st}, Options{DatabaseTimeout: timeout})[0]
	admin := r.adminToken(t)

	g.set(true)
	safety := time.AfterFunc(holdFor, func() { g.set(false) })
	defer safety.Stop()
	frozeAt := time.Now()

	var wg sync.WaitGroup
	answers := make([]answer, 6)
	for i := range 4 {
		wg.Go(func() { answers[i] = r.clientToken(t, "mandate-admin", testAdminSecret) })
	}
	wg.Go(func() { answers[4] = r.introspect(t, admin) })
	wg.Go(func() { answers[5] = r.call(t, http.MethodGet, "/clients", admin, nil) })
	wg.Wait()
	var worst time.Duration
	var statuses []int
	for i, a := range answers {
		statuses = append(statuses, a.status)
		worst = max(worst, a.took)
		if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" {
			t.Errorf("request %d with the database frozen: %d %s", i, a.status, a.raw)
		}
		if a.took > timeout+slack {
			t.Errorf("request %d answered after %s with the database frozen; the timeout is %s", i, a.took, timeout)
		}
	}
	if time.Since(frozeAt) > holdFor {
		t.Fatalf("the requests only ended when the database thawed")
	}

	g.set(false)
	thawed := time.Now()
	for {
		a := r.clientToken(t, "mandate-admin", testAdminSecret)
		if a.status == http.StatusOK {
			break
		}
		if time.Since(thawed) > 15*time.Second {
			t.Fatalf("no recovery 15s after the database thawed: %d %s", a.status, a.raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("postgres frozen, database timeout %s: %d requests answered %v, slowest %s; first 200 %s after it thawed",
		timeout, len(answers), statuses, worst.Round(time.Millisecond), time.Since(thawed).Round(time.Millisecond))
}
