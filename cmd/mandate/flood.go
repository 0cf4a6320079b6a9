package main

// `mandate flood`: a flood of requests that fail client authentication (made-up client ids of
// 300 characters, wrong secrets), from a source address of its own, to measure what such
// traffic costs the clients that do authenticate: run `mandate bench` beside it (SPEC §8).
// It prints how many requests it sent and how they were answered.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type floodConfig struct {
	URL         string
	Source      string
	Duration    time.Duration
	Concurrency int
	IDBytes     int
	JSON        bool
}

func parseFloodConfig(args []string, getenv func(string) string, stdout io.Writer) (*floodConfig, error) {
	c := &floodConfig{}
	fe := newFlagSet("flood", stdout)
	fe.string(&c.URL, "url", "MANDATE_URL", envOr(getenv, "MANDATE_ISSUER", "http://localhost:8080"), "Mandate's public listener")
	fe.string(&c.Source, "source", "", "", "local address to send from, e.g. 127.0.0.2 (default: the system's choice)")
	fe.duration(&c.Duration, "duration", "", 20*time.Second, "how long to flood")
	fe.int(&c.Concurrency, "concurrency", "", 8, "connections, each with one request in flight")
	fe.int(&c.IDBytes, "id-bytes", "", 300, "length of the made-up client ids")
	fe.bool(&c.JSON, "json", "", false, "print one JSON object instead of text")
	if err := fe.parse(args, getenv); err != nil {
		return nil, err
	}
	switch {
	case c.Duration <= 0:
		return nil, usagef("flood: --duration must be positive")
	case c.Concurrency < 1 || c.Concurrency > 4096:
		return nil, usagef("flood: --concurrency must be between 1 and 4096")
	case c.IDBytes < 1 || c.IDBytes > 4096:
		return nil, usagef("flood: --id-bytes must be between 1 and 4096")
	}
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("flood: --url %q is not an http(s) URL", c.URL)
	}
	if c.Source != "" && net.ParseIP(c.Source) == nil {
		return nil, usagef("flood: --source %q is not an IP address", c.Source)
	}
	c.URL = strings.TrimRight(c.URL, "/")
	return c, nil
}

type floodResult struct {
	URL       string           `json:"url"`
	Source    string           `json:"source,omitempty"`
	DurationS float64          `json:"duration_s"`
	Requests  int64            `json:"requests"`
	Rate      float64          `json:"requests_per_s"`
	ByStatus  map[string]int64 `json:"by_status"`
}

func runFlood(ctx context.Context, args []string, getenv func(string) string, stdout, _ io.Writer) error {
	cfg, err := parseFloodConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	if cfg.Source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(cfg.Source)}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: nil, DialContext: d.DialContext, MaxIdleConnsPerHost: cfg.Concurrency,
	}}
	defer client.CloseIdleConnections()
	body := url.Values{"grant_type": {"client_credentials"}}.Encode()
	tokenURL := cfg.URL + "/oauth2/token"

	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var total atomic.Int64
	var mu sync.Mutex
	byStatus := map[string]int64{}
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() {
			seen := map[string]int64{}
			defer func() {
				mu.Lock()
				for k, n := range seen {
					byStatus[k] += n
				}
				mu.Unlock()
			}()
			id := make([]byte, cfg.IDBytes)
			for ctx.Err() == nil {
				for i := range id {
					id[i] = 'a' + byte(rand.IntN(26))
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.SetBasicAuth(string(id), "mcs_not-the-secret")
				res, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						seen["transport"]++
					}
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				seen[fmt.Sprint(res.StatusCode)]++
				total.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	res := floodResult{URL: cfg.URL, Source: cfg.Source, DurationS: el, Requests: total.Load(),
		Rate: float64(total.Load()) / el, ByStatus: byStatus}
	if cfg.JSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	codes := make([]string, 0, len(byStatus))
	for c := range byStatus {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%s %s", c, group(byStatus[c]))
	}
	from := ""
	if cfg.Source != "" {
		from = " from " + cfg.Source
	}
	fmt.Fprintf(stdout, "mandate flood: %d connections%s, %.2fs\n  requests    %s = %s/s\n  answers     %s\n",
		cfg.Concurrency, from, el, group(res.Requests), group(int64(res.Rate)), strings.Join(parts, ", "))
	return nil
}
