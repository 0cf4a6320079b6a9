package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// benchConn is one keep-alive HTTP/1.1 connection of the bench's closed loop, with one request
// in flight at a time. It frames the requests itself and reads the answers with
// http.ReadResponse: the bytes on the wire are those of net/http's client, without the
// Transport's per-request work (a Request and its headers, hand-offs between the caller and the
// connection's read and write goroutines). The load generator shares the machine with the
// server it measures, so every microsecond it spends is one the server does not get.
type benchConn struct {
	addr    string      // host:port to dial
	tls     *tls.Config // nil for http://
	timeout time.Duration
	head    []byte // the request up to the Content-Length value

	conn net.Conn
	stop func() bool // unregisters the close-on-cancel hook
	br   *bufio.Reader
	out  []byte
}

// newBenchConn prepares (but does not dial) a connection posting forms to target with the
// given Authorization header value.
func newBenchConn(target, authorization string, timeout time.Duration) (*benchConn, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	c := &benchConn{addr: u.Host, timeout: timeout}
	switch u.Scheme {
	case "http":
		if u.Port() == "" {
			c.addr = net.JoinHostPort(u.Hostname(), "80")
		}
	case "https":
		if u.Port() == "" {
			c.addr = net.JoinHostPort(u.Hostname(), "443")
		}
		c.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	default:
		return nil, fmt.Errorf("unsupported URL scheme %q", u.Scheme)
	}
	c.head = fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: mandate-bench/%s\r\n"+
		"Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n"+
		"Authorization: %s\r\nContent-Length: ", u.RequestURI(), u.Host, version, authorization)
	return c, nil
}

// maxAnswer bounds a token endpoint answer's body.
const maxAnswer = 64 << 10

// post sends body and reads the answer's body into buf. Any failure closes the connection;
// the next post dials a new one.
func (c *benchConn) post(ctx context.Context, body []byte, buf *bytes.Buffer) (status int, err error) {
	if c.conn == nil {
		if err := c.dial(ctx); err != nil {
			return 0, err
		}
	}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	c.out = append(c.out[:0], c.head...)
	c.out = strconv.AppendInt(c.out, int64(len(body)), 10)
	c.out = append(c.out, "\r\n\r\n"...)
	c.out = append(c.out, body...)
	if _, err := c.conn.Write(c.out); err != nil {
		return 0, c.cause(ctx, err)
	}
	res, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, c.cause(ctx, err)
	}
	buf.Reset()
	_, err = buf.ReadFrom(io.LimitReader(res.Body, maxAnswer+1))
	res.Body.Close()
	if err != nil {
		return 0, c.cause(ctx, err)
	}
	if buf.Len() > maxAnswer {
		return 0, fmt.Errorf("an answer larger than %d KiB", maxAnswer>>10) // the connection is out of step: closed
	}
	if res.Close {
		c.close()
	}
	return res.StatusCode, nil
}

// fresh returns an undialled connection like c.
func (c *benchConn) fresh() *benchConn {
	return &benchConn{addr: c.addr, tls: c.tls, timeout: c.timeout, head: c.head}
}

func (c *benchConn) dial(ctx context.Context) error {
	d := net.Dialer{Timeout: c.timeout, KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return err
	}
	if c.tls != nil {
		tc := tls.Client(conn, c.tls)
		hctx, cancel := context.WithTimeout(ctx, c.timeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return err
		}
		conn = tc
	}
	c.conn = conn
	c.stop = context.AfterFunc(ctx, func() { conn.Close() }) // an interrupt ends a request in flight
	if c.br == nil {
		c.br = bufio.NewReaderSize(conn, 8<<10)
	} else {
		c.br.Reset(conn)
	}
	return nil
}

// cause reports an interrupt as the context's error rather than as the closed connection's.
func (c *benchConn) cause(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("the server closed the connection: %w", err)
	}
	return err
}

func (c *benchConn) close() {
	if c.conn != nil {
		c.stop()
		c.conn.Close()
		c.conn = nil
	}
}
