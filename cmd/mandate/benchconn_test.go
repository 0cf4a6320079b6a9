package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// benchConn against a real HTTP server: requests arrive as net/http reads them, one
// connection carries the whole loop, and every way an answer can end (Content-Length,
// chunked, Connection: close, too large, a dead server) leaves the next request working.
func TestBenchConnSpeaksHTTP(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/oauth2/token" || r.Header.Get("Authorization") != "Basic abc" ||
			r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" || r.Host != strings.TrimPrefix(srvURL(r), "http://") {
			http.Error(w, "bad request framing", http.StatusTeapot)
			return
		}
		switch string(body) {
		case "chunked":
			w.Write([]byte(`{"a":`))
			w.(http.Flusher).Flush() // forces chunked encoding
			w.Write([]byte(`1}`))
		case "close":
			w.Header().Set("Connection", "close")
			fmt.Fprint(w, `{"closing":true}`)
		case "huge":
			w.Write(bytes.Repeat([]byte("x"), maxAnswer+10))
		case "refuse":
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"invalid_request"}`)
		default:
			fmt.Fprintf(w, `{"echo":%q}`, body)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	c, err := newBenchConn(srv.URL+"/oauth2/token", "Basic abc", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c = c.fresh()
	defer c.close()
	ctx := t.Context()
	var buf bytes.Buffer
	post := func(body string) (int, string, error) {
		t.Helper()
		status, err := c.post(ctx, []byte(body), &buf)
		return status, buf.String(), err
	}
	for i := range 50 {
		want := fmt.Sprintf(`{"echo":"n=%d"}`, i)
		if status, got, err := post(fmt.Sprintf("n=%d", i)); err != nil || status != 200 || got != want {
			t.Fatalf("request %d: %d %q %v, want 200 %q", i, status, got, err, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("50 requests used %d connections, want 1 (keep-alive)", n)
	}
	if status, got, err := post("chunked"); err != nil || status != 200 || got != `{"a":1}` {
		t.Errorf("chunked answer: %d %q %v", status, got, err)
	}
	if status, got, err := post("refuse"); err != nil || status != 400 || got != `{"error":"invalid_request"}` {
		t.Errorf("refusal: %d %q %v", status, got, err)
	}
	if status, _, err := post("close"); err != nil || status != 200 {
		t.Errorf("Connection: close answer: %d %v", status, err)
	}
	if _, _, err := post("huge"); err == nil {
		t.Error("an answer over the limit was accepted")
	}
	if status, got, err := post("after"); err != nil || status != 200 || got != `{"echo":"after"}` {
		t.Errorf("request after the connection was closed twice: %d %q %v", status, got, err)
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections after two closes, want 3", n)
	}

	// A server that stops answering: the request ends at the timeout, as an error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 8) // accepted, then left to read nothing and answer nothing
	go func() {
		defer close(held)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			held <- conn
		}
	}()
	defer func() {
		ln.Close()
		for conn := range held {
			conn.Close()
		}
	}()
	mute, _ := newBenchConn("http://"+ln.Addr().String()+"/oauth2/token", "Basic abc", 200*time.Millisecond)
	mute = mute.fresh()
	var ne net.Error
	if _, err := mute.post(ctx, []byte("x"), &buf); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("a server that never answers: %v, want a timeout", err)
	}

	// Cancelling the context ends a request in flight.
	cctx, cancel := context.WithCancel(ctx)
	mute = mute.fresh()
	mute.timeout = time.Minute
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := mute.post(cctx, []byte("x"), &buf); err != context.Canceled {
		t.Errorf("post on a cancelled context: %v, want context.Canceled", err)
	}

	if _, err := newBenchConn("ftp://example.com/", "", time.Second); err == nil {
		t.Error("an ftp:// URL was accepted")
	}
}

func srvURL(r *http.Request) string {
	return "http://" + r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
}
