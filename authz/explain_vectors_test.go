package authz_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/internal/vectors"
	"github.com/mandatehq/mandate/storage"
)

// TestExplainAgreesOnVectors asks Explain about every shared envelope vector before the token
// endpoint decides it (TestVectorsThroughTheTokenEndpoint's client and grant): the valid ones
// are explained as the token they get, the refused ones with the endpoint's error and reason,
// at the step that reason belongs to. Asked again as unsigned claims, the valid ones and those
// refused after the signature get the same decision.
func TestExplainAgreesOnVectors(t *testing.T) {
	f, err := vectors.Envelopes()
	if err != nil {
		t.Fatal(err)
	}
	eachBackend(t, func(t *testing.T, store storage.Store) {
		e := newVectorEnv(t, store, f)
		for _, vec := range f.Vectors {
			t.Run(vec.Name, func(t *testing.T) {
				// The vectors are judged at their now; the clock runs on in real time, which
				// would carry the time-edge vectors over their edges on a slow run.
				e.clock.Advance(f.Time().Sub(e.clock.Now()))
				form := exchangeForm(vec.Token, ordersAPI)
				x := explainRow(t, e, f.ClientID, form)
				var whatIf *exchange.Explanation
				if payload := payloadOf(vec.Token); payload != nil {
					whatIf, err = e.svc.Explain(t.Context(), exchange.ExplainRequest{ClientID: f.ClientID, Claims: payload, Audience: ordersAPI})
					if err != nil {
						t.Fatal(err)
					}
				}
				r := e.post("/oauth2/token", f.ClientID, form)
				if vec.Valid {
					e.wantExplainedGrant(t, x, r)
				} else {
					wantExplainedRefusal(t, x, r)
				}
				if whatIf == nil || (x.Refusal != nil && stepOfReason[x.Refusal.Reason] == exchange.StepSignature) ||
					(x.Refusal != nil && x.Refusal.Reason == exchange.ReasonSubjectTokenTooLarge) {
					return
				}
				if whatIf.Decision != x.Decision || (x.Refusal != nil && whatIf.Refusal.Reason != x.Refusal.Reason) {
					t.Errorf("what-if: %s %+v, signed: %s %+v", whatIf.Decision, whatIf.Refusal, x.Decision, x.Refusal)
				}
			})
		}
	})
}

// payloadOf is the JWS payload of a compact token: the very claims its signature covers.
func payloadOf(token string) []byte {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	return b
}
