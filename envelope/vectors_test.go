package envelope_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/internal/vectors"
)

func loadVectors(t *testing.T) *vectors.EnvelopeFile {
	t.Helper()
	f, err := vectors.Envelopes()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func vectorClient(t *testing.T, f *vectors.EnvelopeFile) envelope.Client {
	t.Helper()
	ks, err := envelope.NewStaticKeySet(f.JWKS)
	if err != nil {
		t.Fatal(err)
	}
	return envelope.Client{ID: f.ClientID, Keys: ks, MaxLifetime: time.Duration(f.MaxEnvelopeLifetime) * time.Second}
}

// TestVectorsVerify holds the verifier to every verdict in testdata/vectors/envelopes.json,
// the file the SDKs are judged by too.
func TestVectorsVerify(t *testing.T) {
	f := loadVectors(t)
	now := f.Time()
	v := &envelope.Verifier{Issuer: f.Issuer, Now: func() time.Time { return now }}
	client := vectorClient(t, f)
	for _, vec := range f.Vectors {
		t.Run(vec.Name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), vec.Token, client)
			if vec.Valid {
				if err != nil {
					t.Fatalf("refused a valid vector: %v", err)
				}
				return
			}
			if got := envelope.ReasonOf(err); got != vec.Reason {
				t.Fatalf("reason %q (%v), want %q", got, err, vec.Reason)
			}
		})
	}
}

// TestVectorsSign holds the Go signer to the vectors' signer verdicts: it signs what Mandate
// accepts and refuses, with Mandate's reason, what Mandate would refuse for its content.
func TestVectorsSign(t *testing.T) {
	f := loadVectors(t)
	now := f.Time()
	set, err := jwk.Parse(f.PrivateJWKS)
	if err != nil {
		t.Fatal(err)
	}
	priv, ok := set.LookupKeyID("es256-1")
	if !ok {
		t.Fatal("no es256-1 private key in the vectors")
	}
	s, err := envelope.NewSigner(priv, "es256-1")
	if err != nil {
		t.Fatal(err)
	}
	s.Now = func() time.Time { return now }
	verifier := &envelope.Verifier{Issuer: f.Issuer, Now: func() time.Time { return now }}
	client := vectorClient(t, f)
	judged := 0
	for _, vec := range f.Vectors {
		if vec.Signer == vectors.SignerNA {
			continue
		}
		judged++
		t.Run(vec.Name, func(t *testing.T) {
			var c envelope.Claims
			if err := json.Unmarshal(vec.Claims, &c); err != nil {
				t.Fatalf("claims do not decode: %v", err)
			}
			tok, err := s.Sign(c)
			if vec.Signer == vectors.SignerRefuse {
				var ee *envelope.Error
				if !errors.As(err, &ee) || ee.Reason != vec.Reason {
					t.Fatalf("Sign = %v, want a refusal with reason %q", err, vec.Reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Sign refused claims Mandate accepts: %v", err)
			}
			if _, err := verifier.Verify(context.Background(), tok, client); err != nil {
				t.Fatalf("Mandate refuses what the signer made: %v", err)
			}
		})
	}
	if judged < 20 {
		t.Errorf("only %d vectors judge the signer", judged)
	}
}
