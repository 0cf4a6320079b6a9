package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// instance is a mandate process started through run, as the binary would be.
type instance struct {
	PublicURL string
	AdminURL  string
	Stdout    *syncBuffer
	Logs      *syncBuffer // stderr: the log lines
	cancel    context.CancelFunc
	done      chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs `mandate serve` with env and extra args on :0 ports, and returns once both
// listeners have said where they are. It stops the server at the end of the test.
func start(t *testing.T, env map[string]string, args ...string) *instance {
	t.Helper()
	inst, err := startE(t, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

// startNoFatal is start for goroutines other than the test's: it reports and returns nil.
func startNoFatal(t *testing.T, env map[string]string, args ...string) *instance {
	inst, err := startE(t, env, args...)
	if err != nil {
		t.Error(err)
		return nil
	}
	return inst
}

func startE(t *testing.T, env map[string]string, args ...string) (*instance, error) {
	getenv := func(k string) string { return env[k] }
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	inst := &instance{Stdout: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	args = append([]string{"serve", "--public-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json"}, args...)
	go func() {
		err := run(ctx, args, getenv, inst.Stdout, pw)
		pw.CloseWithError(io.EOF)
		inst.done <- err
	}()
	addrs := make(chan [2]string, 1)
	logs := &syncBuffer{}
	inst.Logs = logs
	go func() {
		var a [2]string
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			var line struct{ Msg, Listener, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				if line.Listener == "public" {
					a[0] = line.Addr
				} else {
					a[1] = line.Addr
				}
				if a[0] != "" && a[1] != "" && !sent {
					addrs <- a
					sent = true
				}
			}
		}
	}()
	select {
	case a := <-addrs:
		inst.PublicURL, inst.AdminURL = "http://"+a[0], "http://"+a[1]
	case err := <-inst.done:
		cancel()
		return nil, fmt.Errorf("mandate exited before listening: %v\nlogs:\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		cancel()
		return nil, fmt.Errorf("mandate did not start listening in 30s; logs:\n%s", logs.String())
	}
	t.Cleanup(func() { inst.stop(t) })
	return inst, nil
}

// stop cancels the server (as SIGINT would) and requires a clean return.
func (i *instance) stop(t *testing.T) {
	t.Helper()
	if i.cancel == nil {
		return
	}
	i.cancel()
	i.cancel = nil
	select {
	case err := <-i.done:
		if err != nil {
			t.Errorf("mandate did not stop cleanly: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("mandate did not stop within 30s")
	}
}

func get(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func TestServeSQLiteHealthAndCleanShutdown(t *testing.T) {
	db := filepath.Join(t.TempDir(), "mandate.db")
	inst := start(t, nil, "--database", db)

	if code, _ := get(t, inst.PublicURL+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	if code, _ := get(t, inst.PublicURL+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d", code)
	}
	resp, err := http.Get(inst.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`mandate_http_requests_total{code="200",route="GET /readyz"} 1`,
		`mandate_decisions_total{event="admin.bootstrap",outcome="granted",reason=""} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	inst.stop(t)
	if _, err := http.Get(inst.PublicURL + "/healthz"); err == nil {
		t.Fatalf("public listener still answers after shutdown")
	}

	// A second start reuses the same store: the bootstrap admin is not created again.
	first := inst.Stdout.String()
	if !strings.Contains(first, "mandate-admin") {
		t.Fatalf("first start did not print the bootstrap admin credentials:\n%s", first)
	}
	again := start(t, nil, "--database", db)
	if code, _ := get(t, again.PublicURL+"/readyz"); code != http.StatusOK {
		t.Fatalf("second start /readyz = %d", code)
	}
	if strings.Contains(again.Stdout.String(), "client_secret") {
		t.Fatalf("second start printed a new bootstrap secret:\n%s", again.Stdout.String())
	}
}

func TestBadConfigurationExitsWithUsageError(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad alg flag", []string{"serve", "--signing-alg", "RS256"}, nil, "--signing-alg (MANDATE_SIGNING_ALG)"},
		{"bad alg env", []string{"serve"}, map[string]string{"MANDATE_SIGNING_ALG": "HS256"}, "MANDATE_SIGNING_ALG"},
		{"bad duration env", []string{"serve"}, map[string]string{"MANDATE_KEY_ROTATION": "soon"}, "MANDATE_KEY_ROTATION (--key-rotation)"},
		{"database timeout too short", []string{"serve", "--database-timeout", "1ms"}, nil, "--database-timeout (MANDATE_DATABASE_TIMEOUT)"},
		{"act depth zero", []string{"serve", "--max-act-depth", "0"}, nil, "--max-act-depth (MANDATE_MAX_ACT_DEPTH)"},
		{"act depth too deep", []string{"serve"}, map[string]string{"MANDATE_MAX_ACT_DEPTH": "99"}, "--max-act-depth (MANDATE_MAX_ACT_DEPTH)"},
		{"retention under a day", []string{"serve", "--audit-retention", "12h"}, nil, "--audit-retention (MANDATE_AUDIT_RETENTION)"},
		{"retention not days", []string{"serve"}, map[string]string{"MANDATE_AUDIT_RETENTION": "400days"}, "MANDATE_AUDIT_RETENTION (--audit-retention)"},
		{"negative retention", []string{"serve", "--audit-retention", "-5d"}, nil, "audit-retention"},
		{"negative repeat interval", []string{"serve"}, map[string]string{"MANDATE_LOG_REPEAT_INTERVAL": "-1s"}, "--log-repeat-interval (MANDATE_LOG_REPEAT_INTERVAL)"},
		{"issuer trailing slash", []string{"serve", "--issuer", "https://mandate.example/"}, nil, "--issuer (MANDATE_ISSUER)"},
		{"postgres without secret", []string{"serve", "--database", "postgres://127.0.0.1:1/x"}, nil, "MANDATE_SECRET is required"},
		{"short secret", []string{"serve"}, map[string]string{"MANDATE_SECRET": "short"}, "MANDATE_SECRET"},
		{"unknown flag", []string{"serve", "--nope"}, nil, "nope"},
		{"unknown command", []string{"frobnicate"}, nil, "unknown command"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range tc.env {
				env[k] = v
			}
			if env["MANDATE_DATABASE_URL"] == "" {
				env["MANDATE_DATABASE_URL"] = filepath.Join(t.TempDir(), "m.db")
			}
			err := run(context.Background(), tc.args, func(k string) string { return env[k] }, io.Discard, io.Discard)
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("run = %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q: want one line containing %q", err, tc.want)
			}
		})
	}
}

// --audit-retention takes days or a duration; 0 keeps every record; the default is SPEC §8's.
func TestAuditRetentionFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string
		want time.Duration
	}{
		{nil, "", 400 * 24 * time.Hour},
		{[]string{"--audit-retention", "30d"}, "", 30 * 24 * time.Hour},
		{[]string{"--audit-retention", "36h"}, "", 36 * time.Hour},
		{nil, "90d", 90 * 24 * time.Hour},
		{nil, "0", 0},
		{[]string{"--audit-retention", "7d"}, "90d", 7 * 24 * time.Hour}, // the flag wins
	} {
		env := map[string]string{"MANDATE_AUDIT_RETENTION": tc.env}
		c, err := parseServeConfig(tc.args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatalf("%v with MANDATE_AUDIT_RETENTION=%q: %v", tc.args, tc.env, err)
		}
		if c.AuditRetention != tc.want {
			t.Errorf("%v with MANDATE_AUDIT_RETENTION=%q: retention %s, want %s", tc.args, tc.env, c.AuditRetention, tc.want)
		}
	}
}
