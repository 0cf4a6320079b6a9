// Command verify-envelope runs Mandate's own envelope verifier over envelopes other SDKs
// signed, so their tests can prove that what they sign is what Mandate accepts:
//
//	go run ./internal/vectors/cmd/verify-envelope < requests.jsonl
//
// Each input line is a JSON object {"token", "jwks", "client_id", "issuer", "now",
// "max_lifetime"} (now in Unix seconds, 0 = the real clock; max_lifetime in seconds, 0 =
// the default); each output line is {"valid": bool, "reason": "…", "description": "…"} in
// the same order, reason being the envelope package's code.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mandatehq/mandate/envelope"
)

type request struct {
	Token       string          `json:"token"`
	JWKS        json.RawMessage `json:"jwks"`
	ClientID    string          `json:"client_id"`
	Issuer      string          `json:"issuer"`
	Now         int64           `json:"now"`
	MaxLifetime int64           `json:"max_lifetime"`
}

type answer struct {
	Valid       bool   `json:"valid"`
	Reason      string `json:"reason,omitempty"`
	Description string `json:"description,omitempty"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "verify-envelope:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var req request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return fmt.Errorf("a line is not a request: %w", err)
		}
		if err := enc.Encode(verify(req)); err != nil {
			return err
		}
	}
	return sc.Err()
}

func verify(req request) answer {
	keys, err := envelope.NewStaticKeySet(req.JWKS)
	if err != nil {
		return answer{Reason: "bad_jwks", Description: err.Error()}
	}
	v := &envelope.Verifier{Issuer: req.Issuer}
	if req.Now != 0 {
		now := time.Unix(req.Now, 0)
		v.Now = func() time.Time { return now }
	}
	_, err = v.Verify(context.Background(), req.Token, envelope.Client{
		ID: req.ClientID, Keys: keys, MaxLifetime: time.Duration(req.MaxLifetime) * time.Second,
	})
	if err != nil {
		var ee *envelope.Error
		if errors.As(err, &ee) {
			return answer{Reason: ee.Reason, Description: ee.Description}
		}
		return answer{Reason: "error", Description: err.Error()}
	}
	return answer{Valid: true}
}
