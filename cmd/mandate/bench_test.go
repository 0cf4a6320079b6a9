package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const benchAdminSecret = "bench-test-admin-secret-0123456789abcdef"

type benchJSON struct {
	URL          string             `json:"url"`
	Issuer       string             `json:"issuer"`
	Concurrency  int                `json:"concurrency"`
	DurationS    float64            `json:"duration_s"`
	Exchanges    int64              `json:"exchanges"`
	Rate         float64            `json:"exchanges_per_s"`
	Errors       int64              `json:"errors"`
	ErrorsByCode map[string]int64   `json:"errors_by_code"`
	LatencyMS    map[string]float64 `json:"latency_ms"`
	Envelopes    map[string]int64   `json:"envelopes"`
	GroupCommit  *struct {
		Commits       int64            `json:"commits"`
		Rows          int64            `json:"rows"`
		RowsPerCommit float64          `json:"rows_per_commit"`
		CommitsUpTo   map[string]int64 `json:"commits_up_to_rows"`
	} `json:"group_commit"`
	PostgresCPU float64 `json:"postgres_cpu_us_per_exchange"`
	Interrupted bool    `json:"interrupted"`
	Audience    string  `json:"audience"`
	ClientID    string  `json:"client_id"`
	GrantID     string  `json:"grant_id"`
}

// benchServer starts Mandate with a known admin secret and returns it with an admin client
// and the environment a bench run needs.
func benchServer(t *testing.T) (*instance, *adminClient, map[string]string) {
	t.Helper()
	db := filepath.Join(t.TempDir(), "mandate.db")
	inst := start(t, map[string]string{"MANDATE_BOOTSTRAP_ADMIN_SECRET": benchAdminSecret}, "--database", db)
	// MANDATE_ISSUER stays unset for the bench: it would be taken as the issuer (the
	// envelopes' aud), which here differs from the listener's URL.
	env := map[string]string{"MANDATE_ADMIN_CLIENT_SECRET": benchAdminSecret}
	adminEnv := map[string]string{"MANDATE_ADMIN_CLIENT_SECRET": benchAdminSecret, "MANDATE_ISSUER": inst.PublicURL}
	admin := &adminClient{base: inst.AdminURL + "/admin/v1", getenv: func(k string) string { return adminEnv[k] }, http: &http.Client{}}
	return inst, admin, env
}

func runBenchCmd(ctx context.Context, env map[string]string, stderr *syncBuffer, args ...string) (string, error) {
	var out bytes.Buffer
	err := run(ctx, append([]string{"bench"}, args...), func(k string) string { return env[k] }, &out, stderr)
	return out.String(), err
}

// status answers the admin API's status for a GET of path (404 when gone).
func adminStatus(t *testing.T, admin *adminClient, path string) (int, map[string]any) {
	t.Helper()
	tok, err := admin.token(context.Background())
	if err != nil {
		t.Fatalf("admin token: %v", err)
	}
	req, _ := http.NewRequest(http.MethodGet, admin.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(res.Body).Decode(&body)
	return res.StatusCode, body
}

// requireNoBenchLeftovers fails when any client, audience or grant made by a bench remains.
func requireNoBenchLeftovers(t *testing.T, admin *adminClient) {
	t.Helper()
	for _, path := range []string{"/clients", "/audiences", "/grants?tenant=" + benchTenant + "&status=active"} {
		code, body := adminStatus(t, admin, path)
		if code != http.StatusOK {
			t.Fatalf("GET %s = %d %v", path, code, body)
		}
		items, _ := body["items"].([]any)
		for _, it := range items {
			m, _ := it.(map[string]any)
			for _, k := range []string{"client_id", "id"} {
				if s, _ := m[k].(string); strings.HasPrefix(s, "bench-") {
					t.Errorf("GET %s still lists %s %q", path, k, s)
				}
			}
			if m["tenant"] == benchTenant {
				t.Errorf("GET %s still lists an active bench grant %v", path, m["id"])
			}
		}
	}
}

func TestBenchRunsAndCleansUp(t *testing.T) {
	inst, admin, env := benchServer(t)
	var stderr syncBuffer
	out, err := runBenchCmd(context.Background(), env, &stderr,
		"--url", inst.PublicURL, "--admin-url", inst.AdminURL,
		"--duration", "2s", "--warmup", "300ms", "--concurrency", "4", "--envelopes", "2000", "--json",
		// The server runs inside this test's process: its CPU stands in for the postmaster's.
		"--postgres-pid", strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
	}
	var res benchJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench --json printed %q: %v", out, err)
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("--json printed more than one line:\n%s", out)
	}
	if res.Exchanges <= 0 {
		t.Fatalf("no exchanges: %s\nstderr:\n%s", out, stderr.String())
	}
	if res.Errors != 0 || len(res.ErrorsByCode) != 0 {
		t.Fatalf("errors during the run: %s", out)
	}
	if res.Concurrency != 4 || res.DurationS != 2 || res.Interrupted || res.URL != inst.PublicURL || res.Issuer != "http://localhost:8080" {
		t.Errorf("report header: %s", out)
	}
	if want := float64(res.Exchanges) / res.DurationS; math.Abs(res.Rate-want) > 0.1 {
		t.Errorf("exchanges_per_s = %v, want exchanges/duration = %v", res.Rate, want)
	}
	l := res.LatencyMS
	order := []string{"min", "p50", "p90", "p99", "p99_9", "max"}
	for i, k := range order {
		if _, ok := l[k]; !ok {
			t.Fatalf("latency_ms has no %s: %s", k, out)
		}
		if i > 0 && l[order[i-1]] > l[k] {
			t.Errorf("latency %s = %v > %s = %v", order[i-1], l[order[i-1]], k, l[k])
		}
	}
	if l["max"] <= 0 || l["mean"] < l["min"] || l["mean"] > l["max"] {
		t.Errorf("latency summary out of range: %v", l)
	}
	if res.Envelopes["preminted"] != 2000 {
		t.Errorf("envelopes = %v, want 2000 pre-minted", res.Envelopes)
	}
	// Every counted exchange used its own envelope: the stock plus the refills cover them.
	if used := res.Exchanges; used > res.Envelopes["preminted"]+res.Envelopes["minted_during_run"] {
		t.Errorf("%d exchanges from %v envelopes", used, res.Envelopes)
	}
	if res.PostgresCPU <= 0 {
		t.Errorf("postgres_cpu_us_per_exchange = %v with --postgres-pid set, want > 0", res.PostgresCPU)
	}
	// The server's group commit wrote every issuance of the run (warm-up included, hence at
	// least the measured ones) in commits of at most 128 rows, the histogram's top bucket.
	if g := res.GroupCommit; g == nil || g.Rows < res.Exchanges || g.Commits <= 0 || g.Commits > g.Rows ||
		g.CommitsUpTo["128"] != g.Commits || math.Abs(g.RowsPerCommit-float64(g.Rows)/float64(g.Commits)) > 0.01 {
		t.Errorf("group_commit figures do not add up: %+v (exchanges %d)\nstderr:\n%s", g, res.Exchanges, stderr.String())
	}
	if !strings.Contains(stderr.String(), "exchanges") {
		t.Errorf("no progress line on stderr:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), "\r") {
		t.Errorf("progress on a non-terminal used carriage returns")
	}

	// What the bench created is gone: the client and audience deleted, the grant with them.
	if !strings.HasPrefix(res.ClientID, "bench-") || res.Audience == "" || res.GrantID == "" {
		t.Fatalf("report does not name what it created: %s", out)
	}
	for _, path := range []string{"/clients/" + res.ClientID, "/audiences/" + res.Audience} {
		if code, _ := adminStatus(t, admin, path); code != http.StatusNotFound {
			t.Errorf("GET %s after the bench = %d, want 404", path, code)
		}
	}
	if code, g := adminStatus(t, admin, "/grants/"+res.GrantID); code != http.StatusNotFound && g["status"] == "active" {
		t.Errorf("grant %s is still active after the bench: %v", res.GrantID, g)
	}
	requireNoBenchLeftovers(t, admin)

	// The text report says the same in words.
	var stderr2 syncBuffer
	out, err = runBenchCmd(context.Background(), env, &stderr2,
		"--url", inst.PublicURL, "--admin-url", inst.AdminURL,
		"--duration", "1s", "--warmup", "0s", "--concurrency", "2", "--envelopes", "500")
	if err != nil {
		t.Fatalf("bench (text): %v\n%s", err, stderr2.String())
	}
	for _, want := range []string{"exchanges", "/s", "p50", "p90", "p99", "max", "errors      0\n", "rows per commit"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	requireNoBenchLeftovers(t, admin)
}

// cancelOnWrite cancels a context when a progress line reports measured exchanges, as a
// Ctrl-C in the middle of the run would.
type cancelOnWrite struct {
	syncBuffer
	once   sync.Once
	cancel context.CancelFunc
}

func (c *cancelOnWrite) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("exchanges")) {
		c.once.Do(c.cancel)
	}
	return c.syncBuffer.Write(p)
}

func TestBenchInterruptedCleansUp(t *testing.T) {
	inst, admin, env := benchServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &cancelOnWrite{cancel: cancel}
	var out bytes.Buffer
	err := run(ctx, []string{"bench", "--url", inst.PublicURL, "--admin-url", inst.AdminURL,
		"--duration", "10m", "--warmup", "0s", "--concurrency", "2", "--envelopes", "1000", "--json"},
		func(k string) string { return env[k] }, &out, stderr)
	if err != nil {
		t.Fatalf("interrupted bench: %v\n%s", err, stderr.String())
	}
	var res benchJSON
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("bench printed %q: %v", out.String(), err)
	}
	if !res.Interrupted || res.DurationS <= 0 || res.DurationS >= 600 {
		t.Errorf("interrupted run reported %s", out.String())
	}
	if res.Errors != 0 {
		t.Errorf("the interruption was counted as errors: %s", out.String())
	}
	requireNoBenchLeftovers(t, admin)
}

func TestBenchSetupFailures(t *testing.T) {
	inst, admin, env := benchServer(t)
	base := []string{"--url", inst.PublicURL, "--admin-url", inst.AdminURL, "--duration", "1s", "--warmup", "0s", "--envelopes", "10"}

	t.Run("wrong admin secret", func(t *testing.T) {
		bad := map[string]string{"MANDATE_ADMIN_CLIENT_SECRET": "not-the-admin-secret-0123456789abcdef"}
		var stderr syncBuffer
		out, err := runBenchCmd(context.Background(), bad, &stderr, base...)
		if err == nil || !strings.Contains(err.Error(), "invalid_client") {
			t.Fatalf("bench with a wrong admin secret = %v, want an invalid_client error", err)
		}
		if errors.As(err, new(usageError)) || out != "" {
			t.Errorf("setup failure reported as %T, printed %q", err, out)
		}
	})
	t.Run("issuer the server does not have", func(t *testing.T) {
		// Everything is created, then the first exchange fails (aud mismatch): the error
		// says why, and cleanup still removes it all.
		var stderr syncBuffer
		out, err := runBenchCmd(context.Background(), env, &stderr, append(base, "--issuer", "https://not-this-one.example")...)
		if err == nil || !strings.Contains(err.Error(), "invalid_request") {
			t.Fatalf("bench with a wrong issuer = %v, want the first exchange's invalid_request", err)
		}
		if out != "" {
			t.Errorf("failed setup printed a report: %q", out)
		}
		requireNoBenchLeftovers(t, admin)
	})
	t.Run("bad flags", func(t *testing.T) {
		for _, args := range [][]string{
			{"--concurrency", "0"}, {"--duration", "0s"}, {"--warmup", "-1s"}, {"--envelopes", "-5"},
			{"--url", "localhost:8080"}, {"--admin-url", "ftp://x"}, {"extra"},
			{"--postgres-pid", "-1"}, {"--postgres-pid", "999999999"},
		} {
			_, err := runBenchCmd(context.Background(), env, &syncBuffer{}, args...)
			if !errors.As(err, new(usageError)) {
				t.Errorf("bench %v = %v, want a usage error", args, err)
			}
		}
	})
}

// ---------------------------------------------------------------------------------------------
// histogram

// exactQuantile is the nearest-rank quantile of sorted values.
func exactQuantile(sorted []int64, q float64) int64 {
	rank := int(math.Ceil(q*float64(len(sorted)) - 1e-9))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func TestHistogramQuantilesWithinBucketError(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	dists := map[string]func() int64{
		// Latency-like: log-normal around 2 ms with a long tail.
		"lognormal": func() int64 { return int64(2e6 * math.Exp(r.NormFloat64()*0.8)) },
		"uniform":   func() int64 { return r.Int64N(50_000_000) },
		"bimodal": func() int64 {
			if r.IntN(100) < 3 {
				return 40_000_000 + r.Int64N(10_000_000)
			}
			return 500_000 + r.Int64N(100_000)
		},
		"huge": func() int64 { return math.MaxInt64 - r.Int64N(1<<40) },
	}
	for name, gen := range dists {
		t.Run(name, func(t *testing.T) {
			var h histogram
			vals := make([]int64, 100_003)
			for i := range vals {
				vals[i] = gen()
				h.record(vals[i])
			}
			slices.Sort(vals)
			if h.count() != uint64(len(vals)) || h.min != vals[0] || h.max != vals[len(vals)-1] {
				t.Fatalf("count/min/max = %d/%d/%d, want %d/%d/%d", h.count(), h.min, h.max, len(vals), vals[0], vals[len(vals)-1])
			}
			for _, q := range []float64{0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
				got, want := h.quantile(q), exactQuantile(vals, q)
				// Never below the true value, at most one bucket width (1/128) above it.
				if got < want || float64(got-want) > float64(want)/histSub {
					t.Errorf("q%v = %d, exact %d (allowed up to %d)", q, got, want, want+want/histSub)
				}
			}
		})
	}
}

func TestHistogramSmallValuesAreExact(t *testing.T) {
	var h histogram
	for v := int64(1); v <= 100; v++ {
		h.record(v)
	}
	for q, want := range map[float64]int64{0.01: 1, 0.5: 50, 0.9: 90, 0.99: 99, 0.995: 100, 1: 100} {
		if got := h.quantile(q); got != want {
			t.Errorf("q%v of 1..100 = %d, want %d", q, got, want)
		}
	}
	if h.mean() != 50 { // 50.5 truncated
		t.Errorf("mean = %d, want 50", h.mean())
	}
}

func TestHistogramEdges(t *testing.T) {
	var empty histogram
	if empty.quantile(0.5) != 0 || empty.mean() != 0 || empty.count() != 0 {
		t.Errorf("empty histogram: q50 %d mean %d n %d", empty.quantile(0.5), empty.mean(), empty.count())
	}
	var h histogram
	h.record(-5) // a clock step backwards records as 0, never panics
	h.record(math.MaxInt64)
	if h.min != 0 || h.max != math.MaxInt64 || h.quantile(1) != math.MaxInt64 || h.quantile(0.5) != 0 {
		t.Errorf("edges: min %d max %d q100 %d q50 %d", h.min, h.max, h.quantile(1), h.quantile(0.5))
	}
	// The single value of a wide bucket is reported as itself, not the bucket's edge.
	var one histogram
	one.record(1_234_567)
	if got := one.quantile(0.99); got != 1_234_567 {
		t.Errorf("q99 of one value = %d", got)
	}
	// Every bucket's bounds are contiguous and hold the values that map to them.
	prevHi := int64(-1)
	for i := range histBuckets {
		lo, hi := histBounds(i)
		if lo != prevHi+1 || hi < lo || histIndex(lo) != i || histIndex(hi) != i {
			t.Fatalf("bucket %d = [%d, %d] after %d; index(lo) %d index(hi) %d", i, lo, hi, prevHi, histIndex(lo), histIndex(hi))
		}
		prevHi = hi
	}
	if prevHi != math.MaxInt64 {
		t.Fatalf("buckets end at %d, want MaxInt64", prevHi)
	}
}

func TestHistogramMergeEqualsOne(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var all, a, b histogram
	for i := range 50_000 {
		v := r.Int64N(1 << 30)
		all.record(v)
		if i%3 == 0 {
			a.record(v)
		} else {
			b.record(v)
		}
	}
	var m histogram
	m.merge(&a)
	m.merge(&b)
	m.merge(&histogram{})
	if m != all {
		for _, q := range []float64{0.5, 0.99} {
			t.Logf("q%v merged %d one %d", q, m.quantile(q), all.quantile(q))
		}
		t.Fatalf("merged histogram differs from the one recorded directly (n %d/%d, min %d/%d, max %d/%d)",
			m.n, all.n, m.min, all.min, m.max, all.max)
	}
}

func TestGroup(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := group(n); got != want {
			t.Errorf("group(%d) = %q, want %q", n, got, want)
		}
	}
}

// --interval's slices: each latency goes to the slice its answer came in, each slice
// reports its own rate and percentiles, and answers outside the window are not counted.
func TestSlicedLatencies(t *testing.T) {
	s := newSlicedLatencies(3*time.Second, time.Second)
	for i := range 100 {
		s.record(time.Duration(i)*time.Millisecond, time.Millisecond) // slice 0: 100 × 1 ms
	}
	for i := range 99 {
		s.record(2*time.Second+time.Duration(i)*time.Millisecond, 2*time.Millisecond) // slice 2
	}
	s.record(2500*time.Millisecond, 300*time.Millisecond) // slice 2's stall
	s.record(3*time.Second, time.Hour)                    // after the window
	s.record(-time.Millisecond, time.Hour)                // before it
	got := s.summary()
	if len(got) != 3 {
		t.Fatalf("%d slices, want 3: %+v", len(got), got)
	}
	// Percentiles are bucket edges, at most 1/128 above the value.
	near := func(got, want float64) bool { return got >= want && got <= want*1.01 }
	if got[0].Exchanges != 100 || got[0].Rate != 100 || got[0].Max != 1 || got[0].StartS != 0 {
		t.Errorf("slice 0: %+v", got[0])
	}
	if got[1].Exchanges != 0 || got[1].P99 != 0 || got[1].StartS != 1 {
		t.Errorf("slice 1 (empty): %+v", got[1])
	}
	if got[2].Exchanges != 100 || !near(got[2].P50, 2) || !near(got[2].P99, 2) || got[2].Max != 300 {
		t.Errorf("slice 2: %+v, want p99 2 ms and max 300 ms", got[2])
	}
	if newSlicedLatencies(time.Second, 0).summary() != nil {
		t.Error("without --interval there are slices")
	}
}
