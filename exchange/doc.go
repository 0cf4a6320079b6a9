// Package exchange is Mandate's RFC 8693 core: it turns an authenticated client's token
// exchange request (an Execution Identity Envelope as subject_token, a target audience,
// optional scopes) into a decision under the stored delegation grants and, when granted, a
// signed RFC 9068 access token whose issuance, replay mark and audit record are committed
// together. It also issues client_credentials tokens.
//
// The decision is SPEC §4's table as code: decisionTable, a list of named steps in the
// table's order, every refusal an *Error carrying its RFC 6749 error code, a stable reason
// code (for the audit log and the client) and a plain description. Exchange runs the steps
// and stops at the first refusal; Explain runs the same steps and reports each one, without
// signing or writing anything, so the two cannot disagree.
//
// This package knows no HTTP and no OAuth framework: it must not import net/http, fosite or
// package authz; authz maps HTTP onto it. It talks to storage only through storage.Store.
package exchange
