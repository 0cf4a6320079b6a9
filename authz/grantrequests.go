package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// Paths of SPEC §11 on the public listener. The consent pages themselves are package
// consent's; the links to them are built here.
const (
	PathGrantRequests = "/oauth2/grant-requests"
	PathConsent       = "/consent"
)

// grantRequestCreated is the 201 answer: RFC 8628 §3.2's shape, with request_id in place of
// device_code (the client polls by it) and no user_code (the link names the request).
type grantRequestCreated struct {
	RequestID               string `json:"request_id"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete"`
	ExpiresIn               int64  `json:"expires_in"`
	Interval                int64  `json:"interval"`
}

// grantRequestState is the answer to a client polling its request.
type grantRequestState struct {
	RequestID string `json:"request_id"`
	Status    string `json:"status"`
	GrantID   string `json:"grant_id,omitempty"`
	ExpiresIn int64  `json:"expires_in,omitempty"`
	Interval  int64  `json:"interval,omitempty"`
}

// grantRequestJSON is the JSON form of a grant request. Client credentials may travel in it
// as they would in a form (client_secret_post, private_key_jwt).
type grantRequestJSON struct {
	Tenant              string   `json:"tenant"`
	Subject             string   `json:"subject"`
	AgentID             string   `json:"agent_id"`
	Audiences           []string `json:"audiences"`
	Scopes              []string `json:"scopes"`
	Modes               []string `json:"modes"`
	Duration            *int64   `json:"duration"`
	Purpose             string   `json:"purpose"`
	ClientID            string   `json:"client_id"`
	ClientSecret        string   `json:"client_secret"`
	ClientAssertion     string   `json:"client_assertion"`
	ClientAssertionType string   `json:"client_assertion_type"`
}

// handleCreateGrantRequest is POST /oauth2/grant-requests (SPEC §11): client authentication,
// then exchange decides what the client may ask for.
func (s *Server) handleCreateGrantRequest() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		att, ok := s.admit(w, r, endpointGrantRequests)
		if !ok {
			return
		}
		defer att.Done()
		// Until the client is authenticated a refusal is nobody's: counted and throttled
		// per address like the token endpoint's (SPEC §8).
		anonymous := func(form url.Values, err error) {
			s.refuseUnauthenticated(&att, r, endpointGrantRequests, form, err)
			writeError(w, r, s.log, err)
		}
		form, in, err := readGrantRequest(w, r)
		if err != nil {
			anonymous(form, err)
			return
		}
		if err := singletons(form, "client_id", "client_secret", "client_assertion", "client_assertion_type"); err != nil {
			anonymous(form, err)
			return
		}
		fc, err := s.oauth.AuthenticateClient(r.Context(), r, form)
		if err != nil {
			anonymous(form, err)
			return
		}
		in.Client = fc.(*client).c
		in.RemoteAddr = hostOf(r.RemoteAddr)
		gr, err := s.exchange.CreateGrantRequest(r.Context(), *in)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		writeJSON(w, http.StatusCreated, grantRequestCreated{
			RequestID:               gr.ID,
			VerificationURI:         s.issuer + PathConsent,
			VerificationURIComplete: s.issuer + PathConsent + "/" + url.PathEscape(gr.ID),
			ExpiresIn:               int64(gr.ExpiresAt.Sub(s.now()) / time.Second),
			Interval:                int64(exchange.GrantRequestPollInterval / time.Second),
		})
	})
}

// readGrantRequest reads a form or JSON body into the input and the form client
// authentication reads.
func readGrantRequest(w http.ResponseWriter, r *http.Request) (url.Values, *exchange.GrantRequestInput, error) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "application/json" {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, nil, errBodyTooLarge
			}
			return nil, nil, invalidRequest("the request body could not be read")
		}
		var j grantRequestJSON
		dec := json.NewDecoder(bytes.NewReader(body))
		if err := dec.Decode(&j); err != nil || dec.More() {
			return nil, nil, invalidRequest("the body is not a JSON grant request")
		}
		texts := append([]string{j.Tenant, j.Subject, j.AgentID, j.Purpose, j.ClientID, j.ClientSecret,
			j.ClientAssertion, j.ClientAssertionType}, append(append(j.Audiences, j.Scopes...), j.Modes...)...)
		for _, t := range texts {
			if !isText(t) {
				return nil, nil, errNotText
			}
		}
		form := url.Values{}
		for k, v := range map[string]string{"client_id": j.ClientID, "client_secret": j.ClientSecret,
			"client_assertion": j.ClientAssertion, "client_assertion_type": j.ClientAssertionType} {
			if v != "" {
				form.Set(k, v)
			}
		}
		r.PostForm, r.Form = form, form
		in := &exchange.GrantRequestInput{Tenant: j.Tenant, Subject: j.Subject, AgentID: j.AgentID,
			Audiences: j.Audiences, Scopes: j.Scopes, Modes: j.Modes, Purpose: j.Purpose}
		if j.Duration != nil {
			in.Duration, in.DurationGiven = time.Duration(*j.Duration)*time.Second, true
			if *j.Duration <= 0 || *j.Duration > 1<<31 {
				in.Duration = 0 // refused by the policy as not positive
			}
		}
		return form, in, nil
	}
	form, err := parseForm(w, r)
	if err != nil {
		return nil, nil, err
	}
	if err := singletons(form, "tenant", "subject", "agent_id", "audiences", "scopes", "modes", "duration", "purpose"); err != nil {
		return nil, nil, err
	}
	in := &exchange.GrantRequestInput{
		Tenant: form.Get("tenant"), Subject: form.Get("subject"), AgentID: form.Get("agent_id"),
		Audiences: strings.Fields(form.Get("audiences")), Scopes: strings.Fields(form.Get("scopes")),
		Modes: strings.Fields(form.Get("modes")), Purpose: form.Get("purpose"),
	}
	if d := form.Get("duration"); d != "" {
		n, err := strconv.ParseInt(d, 10, 32)
		if err != nil {
			return nil, nil, invalidRequest("duration must be a whole number of seconds")
		}
		in.Duration, in.DurationGiven = time.Duration(n)*time.Second, true
	}
	return form, in, nil
}

// handleGetGrantRequest answers a client polling its grant request: GET with
// client_secret_basic, or POST with any client authentication in the form (for
// client_secret_post and private_key_jwt, which need a body).
func (s *Server) handleGetGrantRequest() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		att, ok := s.admit(w, r, endpointGrantRequests)
		if !ok {
			return
		}
		defer att.Done()
		form := url.Values{}
		anonymous := func(err error) {
			s.refuseUnauthenticated(&att, r, endpointGrantRequests, form, err)
			writeError(w, r, s.log, err)
		}
		if r.Method == http.MethodPost {
			var err error
			if form, err = parseForm(w, r); err != nil {
				anonymous(err)
				return
			}
		}
		if err := singletons(form, "client_id", "client_secret", "client_assertion", "client_assertion_type"); err != nil {
			anonymous(err)
			return
		}
		fc, err := s.oauth.AuthenticateClient(r.Context(), r, form)
		if err != nil {
			anonymous(err)
			return
		}
		gr, err := s.exchange.ClientGrantRequest(r.Context(), fc.(*client).c, r.PathValue("id"))
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		now := s.now()
		out := grantRequestState{RequestID: gr.ID, Status: gr.Status(now), GrantID: gr.GrantID}
		if out.Status == storage.GrantRequestPending {
			out.ExpiresIn = int64(gr.ExpiresAt.Sub(now) / time.Second)
			out.Interval = int64(exchange.GrantRequestPollInterval / time.Second)
		}
		writeJSON(w, http.StatusOK, out)
	})
}
