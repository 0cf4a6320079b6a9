// Package authz is Mandate's OAuth 2.0 authorization server on the public listener: the token
// endpoint (RFC 8693 token exchange and client_credentials), introspection (RFC 7662),
// revocation (RFC 7009), the authorization server metadata (RFC 8414) and the JWKS.
//
// It owns the HTTP side only: form parsing, client authentication, response and error
// writing. Every decision about what a token may say belongs to package exchange, which this
// package calls once per request. It is the only importer of fosite in the project; fosite
// does the token endpoint's request plumbing, client_secret_basic/post authentication (with
// our HMAC secret hasher and rotated secrets) and the grant-handler dispatch. private_key_jwt
// is verified here with the client's registered keys (see clientauth.go for why).
//
// authz must not import storage backends (storage/sqlite, storage/postgres) or the admin API.
package authz
