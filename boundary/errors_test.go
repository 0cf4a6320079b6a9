package boundary

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"

	"github.com/mandatehq/mandate/envelope"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func envelopeKey() (*envelope.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return envelope.NewSigner(k, "env1")
}
