package main

// `mandate bench`: a closed-loop load generator for the token exchange (issue 7). It sets up
// its own audience, client and grant through the admin API, exactly as an operator would,
// and removes them afterwards, so it can run against any Mandate without leaving traces
// beyond the audit log. Envelopes are signed before the clock starts: the numbers measure
// Mandate, not the bench's own ECDSA signing.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
)

const (
	benchTenant = "bench"
	benchScope  = "bench:read"
	benchAgent  = "bench-agent"
	grantTypeTE = "urn:ietf:params:oauth:grant-type:token-exchange"
	// benchAutoRate sizes the automatic envelope stock: enough for this many exchanges a
	// second over warmup + duration (plus a quarter); beyond it a refiller mints during
	// the run, which the report says.
	benchAutoRate  = 5000
	benchAutoMax   = 1_000_000
	benchCleanupTO = 30 * time.Second
)

type benchConfig struct {
	URL         string // public listener: /oauth2/token and the metadata
	Issuer      string // the envelopes' aud; discovered from the metadata when empty
	AdminURL    string
	Duration    time.Duration
	Warmup      time.Duration
	Concurrency int
	Envelopes   int
	Timeout     time.Duration
	JSON        bool
	PostgresPID int // the postmaster, when it runs on this machine: its tree's CPU is reported
	// Interval, when set, also reports the measured window in slices of this length, so a
	// stall (a partition dropped, a checkpoint) shows as one slice's p99 and not as a blur.
	Interval time.Duration
}

func parseBenchConfig(args []string, getenv func(string) string, stdout io.Writer) (*benchConfig, error) {
	c := &benchConfig{}
	fe := newFlagSet("bench", stdout)
	fe.describe("Provisions a throw-away audience, client and grant on a running Mandate, signs envelopes\n"+
		"before the clock starts, runs a closed-loop token-exchange load and reports throughput and\n"+
		"latency. What it created is removed afterwards.", adminEnv[:3]...)
	fe.string(&c.URL, "url", "MANDATE_URL", envOr(getenv, "MANDATE_ISSUER", "http://localhost:8080"), "Mandate's public listener (where /oauth2/token is)")
	fe.string(&c.Issuer, "issuer", "MANDATE_ISSUER", "", "Mandate's issuer, the envelopes' aud (default: read from --url's metadata)")
	fe.string(&c.AdminURL, "admin-url", "MANDATE_ADMIN_URL", "http://127.0.0.1:8081", "Mandate's admin listener")
	fe.duration(&c.Duration, "duration", "", 20*time.Second, "how long the measured load runs")
	fe.duration(&c.Warmup, "warmup", "", 2*time.Second, "load before the measurement, not counted")
	fe.int(&c.Concurrency, "concurrency", "", 16, "connections, each with one request in flight")
	fe.int(&c.Envelopes, "envelopes", "", 0, "envelopes signed before the clock starts; 0: enough for 5000/s over warmup+duration")
	fe.duration(&c.Timeout, "timeout", "", 10*time.Second, "per-request timeout")
	fe.bool(&c.JSON, "json", "", false, "print one JSON object instead of text")
	fe.duration(&c.Interval, "interval", "", 0, "also report each slice of the measured window this long (rate, p99, max), to see stalls; 0: off")
	fe.int(&c.PostgresPID, "postgres-pid", "", 0, "the postmaster's pid, when Postgres runs on this machine: report its CPU (and its children's) per exchange (Linux /proc)")
	if err := fe.parse(args, getenv); err != nil {
		return nil, err
	}
	switch {
	case c.Duration <= 0:
		return nil, usagef("bench: --duration must be positive")
	case c.Warmup < 0:
		return nil, usagef("bench: --warmup must not be negative")
	case c.Concurrency < 1 || c.Concurrency > 4096:
		return nil, usagef("bench: --concurrency must be between 1 and 4096")
	case c.Envelopes < 0:
		return nil, usagef("bench: --envelopes must not be negative")
	case c.Timeout <= 0:
		return nil, usagef("bench: --timeout must be positive")
	case c.PostgresPID < 0:
		return nil, usagef("bench: --postgres-pid must be a process id")
	case c.Interval < 0 || (c.Interval > 0 && c.Interval < 100*time.Millisecond):
		return nil, usagef("bench: --interval must be 0 (off) or at least 100ms")
	case c.Interval > 0 && c.Duration/c.Interval > 10000:
		return nil, usagef("bench: --interval must cut --duration into at most 10000 slices")
	}
	if c.PostgresPID > 0 {
		if _, err := treeCPU("/proc", c.PostgresPID); err != nil {
			return nil, usagef("bench: --postgres-pid %d: %v", c.PostgresPID, err)
		}
	}
	for name, v := range map[string]string{"url": c.URL, "admin-url": c.AdminURL} {
		if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("bench: --%s %q is not an http(s) URL", name, v)
		}
	}
	c.URL = strings.TrimRight(c.URL, "/")
	c.AdminURL = strings.TrimRight(c.AdminURL, "/")
	if c.Envelopes == 0 {
		secs := (c.Warmup + c.Duration).Seconds()
		c.Envelopes = int(min(float64(benchAutoMax), math.Ceil(secs*benchAutoRate*1.25)))
	}
	return c, nil
}

// runBench is `mandate bench`. Setup or cleanup failing is an error (exit 1); the load's
// own errors are counted and reported, not fatal.
func runBench(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseBenchConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	b := &bench{cfg: cfg, stderr: stderr}
	// For the metadata document only; the load runs on benchConns. A benchmark measures the
	// server, never a proxy.
	b.httpc = &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{Proxy: nil}}
	defer b.httpc.CloseIdleConnections()
	// The admin client takes its token from the public listener the bench targets.
	adminEnv := func(k string) string {
		if k == "MANDATE_ISSUER" {
			return cfg.URL
		}
		return getenv(k)
	}
	b.admin = &adminClient{base: cfg.AdminURL + "/admin/v1", getenv: adminEnv, http: &http.Client{Timeout: 30 * time.Second}}

	// Whatever setup created is removed on every way out, Ctrl-C included: cleanup runs on
	// a context that outlives the cancelled one.
	defer func() {
		if cerr := b.cleanup(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := b.setup(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("bench: interrupted during setup")
		}
		return fmt.Errorf("bench setup: %w", err)
	}
	fmt.Fprintf(stderr, "bench: created audience and client %s, grant %s; signing %s envelopes\n", b.name, b.grantID, group(int64(cfg.Envelopes)))
	if err := b.mintStock(ctx); err != nil {
		return fmt.Errorf("bench setup: %w", err)
	}
	if err := b.probe(ctx); err != nil {
		return fmt.Errorf("bench setup: %w", err)
	}
	gc0, gcErr := b.groupCommit(ctx)
	res := b.load(ctx)
	if gc1, err := b.groupCommit(context.WithoutCancel(ctx)); err == nil && gcErr == nil {
		res.GroupCommit = gc1.since(gc0)
	} else {
		fmt.Fprintf(stderr, "bench: no group-commit figures from %s/metrics: %v\n", cfg.AdminURL, errors.Join(gcErr, err))
	}
	if cfg.JSON {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		res.print(stdout)
	}
	if res.Interrupted && res.DurationS == 0 {
		return fmt.Errorf("bench: interrupted before the measurement started")
	}
	return nil
}

type bench struct {
	cfg    *benchConfig
	stderr io.Writer
	httpc  *http.Client
	admin  *adminClient

	issuer   string
	name     string // the audience id and the client_id
	audience bool   // created, to be deleted
	clientID string
	secret   string
	grantID  string
	signer   *envelope.Signer
	lifetime time.Duration // exp - iat of every envelope
	tokenURL string
	authz    string     // the Basic Authorization header value
	conn     *benchConn // the load connections' template, never dialled
	prefix   string     // the form body before the subject token

	stock     chan []byte
	preminted int64
	refilled  atomic.Int64
	starved   atomic.Int64
}

func (b *bench) setup(ctx context.Context) error {
	b.tokenURL = b.cfg.URL + "/oauth2/token"
	if _, err := newBenchConn(b.tokenURL, "", b.cfg.Timeout); err != nil {
		return usagef("bad --url: %v", err)
	}
	b.issuer = b.cfg.Issuer
	if b.issuer == "" {
		iss, err := b.discoverIssuer(ctx)
		if err != nil {
			return err
		}
		b.issuer = iss
	}

	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	kid := "bench-" + randomHex(4)
	pub, err := jwk.Import(&raw.PublicKey)
	if err != nil {
		return err
	}
	_ = pub.Set(jwk.KeyIDKey, kid)
	_ = pub.Set(jwk.AlgorithmKey, "ES256")
	_ = pub.Set(jwk.KeyUsageKey, "sig")
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return err
	}
	if b.signer, err = envelope.NewSigner(raw, kid); err != nil {
		return err
	}

	// Envelopes from the stock are used up to warmup+duration after they were signed, so
	// the client accepts lifetimes that long (300 s at least, the 3600 s ceiling at most).
	life := min(max(b.cfg.Warmup+b.cfg.Duration+2*time.Minute, 300*time.Second), time.Hour)
	b.lifetime = life - 5*time.Second

	b.name = "bench-" + randomHex(6)
	if _, _, err := b.admin.do(ctx, http.MethodPost, "/audiences", map[string]any{
		"id": b.name, "name": "mandate bench (temporary)",
		"scopes": []string{benchScope}, "allowed_modes": []string{envelope.ModeOnBehalfOf},
	}); err != nil {
		return fmt.Errorf("creating the bench audience: %w", err)
	}
	b.audience = true
	_, body, err := b.admin.do(ctx, http.MethodPost, "/clients", map[string]any{
		"client_id": b.name, "name": "mandate bench (temporary)",
		"token_endpoint_auth_method": "client_secret_basic",
		"jwks":                       set,
		"grant_types":                []string{grantTypeTE},
		"allowed_tenants":            []string{benchTenant},
		"allowed_audiences":          []string{b.name},
		"max_envelope_lifetime":      int(life / time.Second),
	})
	if err != nil {
		return fmt.Errorf("creating the bench client: %w", err)
	}
	var cl struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}
	if err := json.Unmarshal(body, &cl); err != nil || cl.ClientID == "" {
		return fmt.Errorf("creating the bench client: the answer has no client_id")
	}
	b.clientID = cl.ClientID
	if cl.ClientSecret == "" {
		return fmt.Errorf("creating the bench client: the answer has no client_secret")
	}
	b.secret = cl.ClientSecret
	_, body, err = b.admin.do(ctx, http.MethodPost, "/grants", map[string]any{
		"tenant": benchTenant, "subject": "*", "client_id": b.clientID,
		"audiences": []string{b.name}, "scopes": []string{benchScope},
		"modes":      []string{envelope.ModeOnBehalfOf},
		"expires_at": time.Now().Add(b.cfg.Warmup + b.cfg.Duration + time.Hour).UTC().Format(time.RFC3339),
	})
	if err != nil {
		return fmt.Errorf("creating the bench grant: %w", err)
	}
	var g struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &g); err != nil || g.ID == "" {
		return fmt.Errorf("creating the bench grant: the answer has no id")
	}
	b.grantID = g.ID

	// RFC 6749 §2.3.1: form-encode the credentials before Basic encoding.
	req, _ := http.NewRequest(http.MethodPost, b.tokenURL, nil)
	req.SetBasicAuth(url.QueryEscape(b.clientID), url.QueryEscape(b.secret))
	b.authz = req.Header.Get("Authorization")
	b.conn, _ = newBenchConn(b.tokenURL, b.authz, b.cfg.Timeout) // the URL was checked above
	b.prefix = url.Values{
		"grant_type":         {grantTypeTE},
		"subject_token_type": {envelope.TokenType},
		"audience":           {b.name},
	}.Encode() + "&subject_token="
	return nil
}

// cleanup revokes the grant, then deletes the client and the audience, and says what it
// could not remove.
func (b *bench) cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, benchCleanupTO)
	defer cancel()
	var left []string
	if b.grantID != "" {
		if _, _, err := b.admin.do(ctx, http.MethodPost, "/grants/"+url.PathEscape(b.grantID)+"/revoke",
			map[string]any{"reason": "mandate bench finished"}); err != nil {
			fmt.Fprintf(b.stderr, "bench cleanup: revoking grant %s: %v\n", b.grantID, err)
			left = append(left, "grant "+b.grantID)
		}
	}
	if b.clientID != "" {
		if _, _, err := b.admin.do(ctx, http.MethodDelete, "/clients/"+url.PathEscape(b.clientID), nil); err != nil {
			fmt.Fprintf(b.stderr, "bench cleanup: deleting client %s: %v\n", b.clientID, err)
			left = append(left, "client "+b.clientID)
		}
	}
	if b.audience {
		if _, _, err := b.admin.do(ctx, http.MethodDelete, "/audiences/"+url.PathEscape(b.name), nil); err != nil {
			fmt.Fprintf(b.stderr, "bench cleanup: deleting audience %s: %v\n", b.name, err)
			left = append(left, "audience "+b.name)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("bench cleanup left behind: %s", strings.Join(left, ", "))
	}
	return nil
}

func (b *bench) discoverIssuer(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.cfg.URL+"/.well-known/oauth-authorization-server", nil)
	if err != nil {
		return "", err
	}
	res, err := b.httpc.Do(req)
	if err != nil {
		return "", fmt.Errorf("reading the metadata at %s: %w", b.cfg.URL, err)
	}
	defer res.Body.Close()
	var md struct {
		Issuer string `json:"issuer"`
	}
	if res.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&md) != nil || md.Issuer == "" {
		return "", fmt.Errorf("no metadata document with an issuer at %s (status %d); pass --issuer", b.cfg.URL, res.StatusCode)
	}
	return md.Issuer, nil
}

// mint signs one envelope with a fresh jti and returns the whole form body.
func (b *bench) mint() ([]byte, error) {
	now := time.Now()
	tok, err := b.signer.Sign(envelope.Claims{
		Issuer:        b.clientID,
		Audience:      envelope.Audience{b.issuer},
		IssuedAt:      now,
		ExpiresAt:     now.Add(b.lifetime),
		Actor:         envelope.Actor{Type: envelope.ActorUser, Sub: "bench-user", Tenant: benchTenant},
		Agent:         envelope.Agent{ID: benchAgent, ClientID: b.clientID},
		Session:       envelope.Session{ID: "bench-session", TraceID: randomHex(16)},
		Authorization: envelope.Authorization{Scopes: []string{benchScope}, Confidence: envelope.ConfidenceVerified},
		Delegation:    envelope.Delegation{Mode: envelope.ModeOnBehalfOf, Allowed: []string{b.name}},
	})
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, len(b.prefix)+len(tok))
	body = append(body, b.prefix...)
	return append(body, url.QueryEscape(tok)...), nil
}

// mintStock signs cfg.Envelopes envelopes on every core before the clock starts.
func (b *bench) mintStock(ctx context.Context) error {
	n := b.cfg.Envelopes
	b.stock = make(chan []byte, n)
	var wg sync.WaitGroup
	var left atomic.Int64
	left.Store(int64(n))
	errc := make(chan error, 1)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				body, err := b.mint()
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
				b.stock <- body
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("signing envelopes: %w", err)
	default:
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted while signing envelopes")
	}
	b.preminted = int64(len(b.stock))
	return nil
}

// refill tops the stock up when it runs low, so a run faster than the stock was sized for
// keeps going; what it mints is reported, as it competes with the load for the CPU.
func (b *bench) refill(ctx context.Context) {
	low := cap(b.stock) / 4
	for ctx.Err() == nil {
		if len(b.stock) > low {
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		for range 256 {
			body, err := b.mint()
			if err != nil {
				return
			}
			select {
			case b.stock <- body:
				b.refilled.Add(1)
			case <-ctx.Done():
				return
			}
		}
	}
}

// next takes an envelope; waiting for one is counted, and never timed as latency.
func (b *bench) next(ctx context.Context) []byte {
	select {
	case body := <-b.stock:
		return body
	default:
	}
	b.starved.Add(1)
	select {
	case body := <-b.stock:
		return body
	case <-ctx.Done():
		return nil
	}
}

// probe runs one exchange before the load, so a setup that cannot work fails loudly instead
// of reporting a run made only of errors.
func (b *bench) probe(ctx context.Context) error {
	body, err := b.mint()
	if err != nil {
		return err
	}
	c := b.conn.fresh()
	defer c.close()
	var buf bytes.Buffer
	code, err := b.exchange(ctx, c, body, &buf)
	if err != nil {
		return fmt.Errorf("the first exchange at %s: %w", b.tokenURL, err)
	}
	if code != "" {
		return fmt.Errorf("the first exchange at %s failed: %s: %s", b.tokenURL, code, errorDescription(buf.Bytes()))
	}
	return nil
}

// exchange posts one envelope on c. It returns "" on success, the OAuth error code (or
// http_<status>, bad_response) on a refusal, and an error when the request did not complete.
func (b *bench) exchange(ctx context.Context, c *benchConn, body []byte, buf *bytes.Buffer) (string, error) {
	status, err := c.post(ctx, body, buf)
	if err != nil {
		return "", err
	}
	if status == http.StatusOK {
		// Parsed as a client would, so a malformed success counts as an error, not a win.
		var ok struct {
			AccessToken string `json:"access_token"`
			TokenType   string `json:"token_type"`
			ExpiresIn   int64  `json:"expires_in"`
		}
		if json.Unmarshal(buf.Bytes(), &ok) != nil || ok.AccessToken == "" || ok.TokenType != "Bearer" || ok.ExpiresIn <= 0 {
			return "bad_response", nil
		}
		return "", nil
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(buf.Bytes(), &e) == nil && e.Error != "" && len(e.Error) <= 64 {
		return e.Error, nil
	}
	return fmt.Sprintf("http_%d", status), nil
}

func errorDescription(body []byte) string {
	var e struct {
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Description
}

// benchWorker is one connection's loop and what it saw in the measured window.
type benchWorker struct {
	hist   histogram
	errors map[string]int64
}

// load runs the closed loop: cfg.Concurrency workers, each sending its next request as soon
// as the previous answer is read. A request counts when its answer arrives inside the
// measured window, so completions per second is exactly what the window saw.
func (b *bench) load(ctx context.Context) *benchResult {
	cfg := b.cfg
	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go b.refill(loadCtx)

	begin := time.Now()
	measureFrom := begin.Add(cfg.Warmup)
	measureTo := measureFrom.Add(cfg.Duration)
	var okAll, errAll, okMeasured, errMeasured atomic.Int64
	sliced := newSlicedLatencies(cfg.Duration, cfg.Interval)

	workers := make([]*benchWorker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &benchWorker{errors: map[string]int64{}}
		workers[i] = w
		c := b.conn.fresh()
		wg.Go(func() {
			defer c.close()
			var buf bytes.Buffer
			for loadCtx.Err() == nil && time.Now().Before(measureTo) {
				body := b.next(loadCtx)
				if body == nil {
					return
				}
				t0 := time.Now()
				code, err := b.exchange(loadCtx, c, body, &buf)
				t1 := time.Now()
				if err != nil {
					if loadCtx.Err() != nil {
						return // interrupted: not the server's error
					}
					code = "transport"
				}
				if code == "" {
					okAll.Add(1)
				} else {
					errAll.Add(1)
				}
				if t1.Before(measureFrom) || !t1.Before(measureTo) {
					continue
				}
				if code == "" {
					okMeasured.Add(1)
					w.hist.record(t1.Sub(t0).Nanoseconds())
					sliced.record(t1.Sub(measureFrom), t1.Sub(t0))
				} else {
					errMeasured.Add(1)
					w.errors[code]++
				}
			}
		})
	}

	// The database's CPU over the measured window, read as the window opens and closes.
	var pgFrom, pgTo time.Duration
	var pgErr error
	pgDone := make(chan struct{})
	go func() {
		defer close(pgDone)
		if cfg.PostgresPID == 0 {
			return
		}
		for _, at := range []struct {
			when time.Time
			dst  *time.Duration
		}{{measureFrom, &pgFrom}, {measureTo, &pgTo}} {
			select {
			case <-time.After(time.Until(at.when)):
			case <-loadCtx.Done():
				pgErr = errors.New("interrupted")
				return
			}
			if *at.dst, pgErr = treeCPU("/proc", cfg.PostgresPID); pgErr != nil {
				return
			}
		}
	}()

	done := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		b.progress(done, begin, measureFrom, &okAll, &errAll, &okMeasured, &errMeasured)
	}()
	wg.Wait()
	close(done)
	<-progressDone
	end := time.Now()

	res := &benchResult{
		URL: cfg.URL, Issuer: b.issuer, Concurrency: cfg.Concurrency,
		WarmupS: cfg.Warmup.Seconds(), ErrorsByCode: map[string]int64{},
		Audience: b.name, ClientID: b.clientID, GrantID: b.grantID,
	}
	res.Interrupted = ctx.Err() != nil
	window := cfg.Duration
	if res.Interrupted {
		stop := end
		if stop.After(measureTo) {
			stop = measureTo
		}
		window = max(0, stop.Sub(measureFrom))
	}
	res.DurationS = window.Seconds()
	var h histogram
	for _, w := range workers {
		h.merge(&w.hist)
		for code, n := range w.errors {
			res.ErrorsByCode[code] += n
			res.Errors += n
		}
	}
	res.Exchanges = int64(h.count())
	if window > 0 {
		res.Rate = math.Round(float64(res.Exchanges)/window.Seconds()*10) / 10
	}
	res.Latency = latencySummary{
		Min: ms(h.min), Mean: ms(h.mean()), P50: ms(h.quantile(0.50)), P90: ms(h.quantile(0.90)),
		P99: ms(h.quantile(0.99)), P999: ms(h.quantile(0.999)), Max: ms(h.max),
	}
	<-pgDone // at measureTo, or at once when the run was interrupted (loadCtx ended with ctx)
	if cfg.PostgresPID > 0 && pgErr == nil && okMeasured.Load() > 0 {
		res.PostgresCPUPerExchangeUS = math.Round(float64((pgTo - pgFrom).Microseconds()) / float64(okMeasured.Load()))
	}
	res.Slices = sliced.summary()
	res.Envelopes = envelopeStats{Preminted: b.preminted, MintedDuringRun: b.refilled.Load(), Waits: b.starved.Load()}
	return res
}

// progress writes one status line a second on stderr: rewritten in place on a terminal,
// one line per second elsewhere (logs, CI).
func (b *bench) progress(done <-chan struct{}, begin, measureFrom time.Time, okAll, errAll, okMeasured, errMeasured *atomic.Int64) {
	tty := isTerminal(b.stderr)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastAt := int64(0), begin
	wrote := false
	for {
		select {
		case <-done:
			if tty && wrote {
				fmt.Fprint(b.stderr, "\n")
			}
			return
		case now := <-tick.C:
			n := okAll.Load() + errAll.Load()
			rate := float64(n-last) / now.Sub(lastAt).Seconds()
			last, lastAt = n, now
			total := (b.cfg.Warmup + b.cfg.Duration).Seconds()
			line := fmt.Sprintf("%4.0fs/%.0fs  warmup     rate %s/s", now.Sub(begin).Seconds(), total, group(int64(rate)))
			if !now.Before(measureFrom) {
				line = fmt.Sprintf("%4.0fs/%.0fs  exchanges %s  rate %s/s  errors %s", now.Sub(begin).Seconds(), total,
					group(okMeasured.Load()), group(int64(rate)), group(errMeasured.Load()))
			}
			if tty {
				fmt.Fprintf(b.stderr, "\r%s\x1b[K", line)
			} else {
				fmt.Fprintln(b.stderr, line)
			}
			wrote = true
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// benchResult is the report; --json prints it as is.
type benchResult struct {
	URL          string            `json:"url"`
	Issuer       string            `json:"issuer"`
	Concurrency  int               `json:"concurrency"`
	WarmupS      float64           `json:"warmup_s"`
	DurationS    float64           `json:"duration_s"`
	Exchanges    int64             `json:"exchanges"`
	Rate         float64           `json:"exchanges_per_s"`
	Latency      latencySummary    `json:"latency_ms"`
	Errors       int64             `json:"errors"`
	ErrorsByCode map[string]int64  `json:"errors_by_code"`
	Envelopes    envelopeStats     `json:"envelopes"`
	GroupCommit  *groupCommitStats `json:"group_commit,omitempty"`
	Slices       []sliceSummary    `json:"slices,omitempty"` // with --interval
	// PostgresCPUPerExchangeUS is --postgres-pid's process tree's CPU over the measured
	// window per successful exchange, in microseconds (resolution 10 ms over the window).
	PostgresCPUPerExchangeUS float64 `json:"postgres_cpu_us_per_exchange,omitempty"`
	Interrupted              bool    `json:"interrupted,omitempty"`
	// What setup created (and cleanup removed), for the audit trail.
	Audience string `json:"audience"`
	ClientID string `json:"client_id"`
	GrantID  string `json:"grant_id"`
}

// latencySummary is of the successful exchanges, in milliseconds; each percentile is the
// upper edge of its histogram bucket (at most 1/128 above the true value, never below).
type latencySummary struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

type envelopeStats struct {
	Preminted       int64 `json:"preminted"`
	MintedDuringRun int64 `json:"minted_during_run"`
	Waits           int64 `json:"waits"`
}

func ms(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }

func (r *benchResult) print(w io.Writer) {
	state := ""
	if r.Interrupted {
		state = " (interrupted)"
	}
	fmt.Fprintf(w, "mandate bench: %d connections, %s measured after %s warmup%s\n", r.Concurrency,
		time.Duration(r.DurationS*float64(time.Second)).Round(time.Millisecond), time.Duration(r.WarmupS*float64(time.Second)), state)
	fmt.Fprintf(w, "  target      %s (issuer %s)\n", r.URL, r.Issuer)
	fmt.Fprintf(w, "  exchanges   %s in %.2fs = %s/s\n", group(r.Exchanges), r.DurationS, group(int64(math.Round(r.Rate))))
	l := r.Latency
	fmt.Fprintf(w, "  latency     p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms  (min %.2fms, mean %.2fms)\n",
		l.P50, l.P90, l.P99, l.P999, l.Max, l.Min, l.Mean)
	fmt.Fprintf(w, "  errors      %s", group(r.Errors))
	if len(r.ErrorsByCode) > 0 {
		codes := make([]string, 0, len(r.ErrorsByCode))
		for c := range r.ErrorsByCode {
			codes = append(codes, c)
		}
		sort.Slice(codes, func(i, j int) bool {
			return r.ErrorsByCode[codes[i]] > r.ErrorsByCode[codes[j]] || r.ErrorsByCode[codes[i]] == r.ErrorsByCode[codes[j]] && codes[i] < codes[j]
		})
		parts := make([]string, len(codes))
		for i, c := range codes {
			parts[i] = fmt.Sprintf("%s %s", c, group(r.ErrorsByCode[c]))
		}
		fmt.Fprintf(w, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  envelopes   %s signed before the run, %s during it, %s waits for one\n",
		group(r.Envelopes.Preminted), group(r.Envelopes.MintedDuringRun), group(r.Envelopes.Waits))
	if len(r.Slices) > 0 {
		worst := r.Slices[0]
		for _, sl := range r.Slices {
			if sl.P99 > worst.P99 {
				worst = sl
			}
		}
		fmt.Fprintf(w, "  slices      %d of %.3gs; the worst p99 %.2fms (max %.2fms) in the one from %.3gs\n",
			len(r.Slices), r.Slices[0].LengthS, worst.P99, worst.Max, worst.StartS)
		for _, sl := range r.Slices {
			fmt.Fprintf(w, "    %7.1fs  %s/s  p50 %.2fms  p99 %.2fms  max %.2fms\n", sl.StartS,
				group(int64(math.Round(sl.Rate))), sl.P50, sl.P99, sl.Max)
		}
	}
	if r.PostgresCPUPerExchangeUS > 0 {
		fmt.Fprintf(w, "  postgres    %.0f µs CPU per exchange (the postmaster and its children, measured window)\n", r.PostgresCPUPerExchangeUS)
	}
	if g := r.GroupCommit; g != nil {
		fmt.Fprintf(w, "  commits     %s issuances in %s commits = %.2f rows per commit (warm-up included)", group(g.Rows), group(g.Commits), g.RowsPerCommit)
		// The server's buckets, in order: each counts the commits of at most that many rows.
		bounds := make([]float64, 0, len(g.CommitsUpTo))
		for le := range g.CommitsUpTo {
			if v, err := strconv.ParseFloat(le, 64); err == nil && !math.IsInf(v, 0) {
				bounds = append(bounds, v)
			}
		}
		slices.Sort(bounds)
		var sizes []string
		prev := int64(0)
		for _, v := range bounds {
			le := strconv.FormatFloat(v, 'f', -1, 64)
			if n := g.CommitsUpTo[le]; n > prev {
				sizes = append(sizes, fmt.Sprintf("≤%s: %s", le, group(n-prev)))
				prev = n
			}
		}
		if len(sizes) > 0 {
			fmt.Fprintf(w, "; by size %s", strings.Join(sizes, ", "))
		}
		fmt.Fprintln(w)
	}
}

// groupCommitStats is what the server's mandate_issuance_batch_rows histogram saw during the
// load, warm-up included (every issuance of the server, not only the bench's).
type groupCommitStats struct {
	Commits       int64   `json:"commits"`
	Rows          int64   `json:"rows"`
	RowsPerCommit float64 `json:"rows_per_commit"`
	// Commits by size: how many had at most 1, 2, 4, … rows (the histogram's buckets).
	CommitsUpTo map[string]int64 `json:"commits_up_to_rows"`
}

func (g *groupCommitStats) since(before *groupCommitStats) *groupCommitStats {
	d := &groupCommitStats{Commits: g.Commits - before.Commits, Rows: g.Rows - before.Rows,
		CommitsUpTo: map[string]int64{}}
	for le, n := range g.CommitsUpTo {
		d.CommitsUpTo[le] = n - before.CommitsUpTo[le]
	}
	if d.Commits > 0 {
		d.RowsPerCommit = math.Round(float64(d.Rows)/float64(d.Commits)*100) / 100
	}
	return d
}

// groupCommit reads the server's batch-size histogram from the admin listener's /metrics.
func (b *bench) groupCommit(ctx context.Context) (*groupCommitStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.cfg.AdminURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.httpc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	const name = "mandate_issuance_batch_rows"
	g := &groupCommitStats{CommitsUpTo: map[string]int64{}}
	found := false
	for line := range strings.Lines(string(body)) {
		metric, value, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || !strings.HasPrefix(metric, name) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(value, &v); err != nil {
			continue
		}
		switch {
		case metric == name+"_sum":
			g.Rows, found = int64(v), true
		case metric == name+"_count":
			g.Commits = int64(v)
		case strings.HasPrefix(metric, name+`_bucket{le="`):
			le := strings.TrimSuffix(strings.TrimPrefix(metric, name+`_bucket{le="`), `"}`)
			g.CommitsUpTo[le] = int64(v)
		}
	}
	if !found {
		return nil, fmt.Errorf("%s not served", name)
	}
	return g, nil
}

// group writes n with thousands separators.
func group(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// slicedLatencies is --interval's record: a histogram per slice of the measured window,
// shared by the workers under one lock (a few thousand records a second contend for nothing).
type slicedLatencies struct {
	mu     sync.Mutex
	every  time.Duration
	slices []*histogram // made on first use: 57 KiB each
}

func newSlicedLatencies(window, every time.Duration) *slicedLatencies {
	if every <= 0 {
		return nil
	}
	n := int((window + every - 1) / every)
	return &slicedLatencies{every: every, slices: make([]*histogram, n)}
}

// record files a latency by when, since the measured window opened, its answer came.
func (s *slicedLatencies) record(at, latency time.Duration) {
	if s == nil || at < 0 {
		return
	}
	i := int(at / s.every)
	if i >= len(s.slices) {
		return
	}
	s.mu.Lock()
	if s.slices[i] == nil {
		s.slices[i] = &histogram{}
	}
	s.slices[i].record(latency.Nanoseconds())
	s.mu.Unlock()
}

// sliceSummary is one slice of the measured window.
type sliceSummary struct {
	StartS    float64 `json:"start_s"`
	LengthS   float64 `json:"length_s"`
	Exchanges int64   `json:"exchanges"`
	Rate      float64 `json:"exchanges_per_s"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
}

func (s *slicedLatencies) summary() []sliceSummary {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]sliceSummary, len(s.slices))
	for i, h := range s.slices {
		if h == nil {
			h = &histogram{}
		}
		out[i] = sliceSummary{StartS: (time.Duration(i) * s.every).Seconds(), LengthS: s.every.Seconds(),
			Exchanges: int64(h.count()), Rate: float64(h.count()) / s.every.Seconds(),
			P50: ms(h.quantile(0.50)), P99: ms(h.quantile(0.99)), Max: ms(h.max)}
	}
	return out
}

// ---------------------------------------------------------------------------------------------
// histogram

// histogram is a fixed log-linear histogram of non-negative int64 values (nanoseconds here),
// in the manner of HdrHistogram: values below 256 have a bucket each; above, every power of
// two is split into 128 equal buckets, so a bucket is at most 1/128 (0.8 %) of its values
// wide. 7296 buckets cover all of int64 in 57 KiB, whatever the run's length.
type histogram struct {
	counts   [histBuckets]uint64
	n        uint64
	sum      float64
	min, max int64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits             // buckets per power of two
	histBuckets = (64 - histSubBits) * histSub // the highest index, of MaxInt64, is 55*128+255
)

func histIndex(v int64) int {
	if v < 2*histSub {
		return int(v)
	}
	s := bits.Len64(uint64(v)) - histSubBits - 1 // v>>s is in [128, 256)
	return s*histSub + int(v>>s)
}

// histBounds is the lowest and highest value bucket i holds.
func histBounds(i int) (lo, hi int64) {
	if i < 2*histSub {
		return int64(i), int64(i)
	}
	s := i/histSub - 1
	top := int64(i - s*histSub)
	lo = top << s
	return lo, lo + (int64(1) << s) - 1
}

func (h *histogram) record(v int64) {
	v = max(v, 0)
	h.counts[histIndex(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

func (h *histogram) count() uint64 { return h.n }

func (h *histogram) mean() int64 {
	if h.n == 0 {
		return 0
	}
	return int64(h.sum / float64(h.n))
}

// quantile returns the q-quantile (0 < q ≤ 1) by the nearest-rank definition: the smallest
// recorded value such that at least q of all values are at or below it, rounded up to its
// bucket's upper edge and capped at the exact maximum. It is never below the true value.
func (h *histogram) quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q*float64(h.n) - 1e-9))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := histBounds(i)
			return min(hi, h.max)
		}
	}
	return h.max
}
