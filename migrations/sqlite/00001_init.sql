-- Mandate's initial schema, SQLite dialect. The Postgres folder holds the same tables and
-- columns under the same version number.
--
-- SQLite conventions (storage/sqlite relies on them):
--   times     INTEGER Unix microseconds, UTC; NULL only in the nullable (zero = unset) columns
--   lists     TEXT holding a JSON array of strings
--   durations INTEGER whole seconds
--   booleans  INTEGER 0/1
-- STRICT tables make SQLite reject a value of the wrong type instead of storing it anyway.

-- +goose Up
CREATE TABLE clients (
    id                            TEXT    NOT NULL PRIMARY KEY,
    name                          TEXT    NOT NULL DEFAULT '',
    token_endpoint_auth_method    TEXT    NOT NULL DEFAULT '',
    secret_hash                   BLOB,
    previous_secret_hash          BLOB,
    previous_secret_expires_at    INTEGER,
    jwks                          TEXT,
    jwks_uri                      TEXT    NOT NULL DEFAULT '',
    grant_types                   TEXT    NOT NULL DEFAULT '[]',
    allowed_tenants               TEXT    NOT NULL DEFAULT '[]',
    allowed_audiences             TEXT    NOT NULL DEFAULT '[]',
    allowed_scopes                TEXT    NOT NULL DEFAULT '[]',
    allowed_modes                 TEXT    NOT NULL DEFAULT '[]',
    max_envelope_lifetime_seconds INTEGER NOT NULL DEFAULT 0,
    max_token_ttl_seconds         INTEGER NOT NULL DEFAULT 0,
    disabled                      INTEGER NOT NULL DEFAULT 0,
    created_at                    INTEGER NOT NULL,
    updated_at                    INTEGER NOT NULL
) STRICT;

CREATE TABLE audiences (
    id                TEXT    NOT NULL PRIMARY KEY,
    name              TEXT    NOT NULL DEFAULT '',
    scopes            TEXT    NOT NULL DEFAULT '[]',
    allowed_modes     TEXT    NOT NULL DEFAULT '[]',
    token_ttl_seconds INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;

-- One row per RFC 8707 resource indicator. The primary key makes a URI name one audience only.
CREATE TABLE audience_resources (
    uri         TEXT NOT NULL PRIMARY KEY,
    audience_id TEXT NOT NULL REFERENCES audiences (id) ON DELETE CASCADE
) STRICT;

CREATE INDEX audience_resources_audience_id ON audience_resources (audience_id);

CREATE TABLE grants (
    id            TEXT    NOT NULL PRIMARY KEY,
    tenant        TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    client_id     TEXT    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    agent_id      TEXT    NOT NULL DEFAULT '',
    audiences     TEXT    NOT NULL DEFAULT '[]',
    scopes        TEXT    NOT NULL DEFAULT '[]',
    modes         TEXT    NOT NULL DEFAULT '[]',
    not_before    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_by    TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoked_by    TEXT    NOT NULL DEFAULT '',
    revoke_reason TEXT    NOT NULL DEFAULT ''
) STRICT;

-- FindActiveGrants' lookup. Deleting a client cascades by client_id alone, which that index
-- (tenant first) cannot serve, hence the second one.
CREATE INDEX grants_tenant_client_subject ON grants (tenant, client_id, subject);
CREATE INDEX grants_client_id ON grants (client_id);

CREATE TABLE signing_keys (
    kid                   TEXT    NOT NULL PRIMARY KEY,
    alg                   TEXT    NOT NULL,
    status                TEXT    NOT NULL,
    public_jwk            TEXT    NOT NULL,
    encrypted_private_key BLOB    NOT NULL,
    created_at            INTEGER NOT NULL,
    activates_at          INTEGER NOT NULL,
    retired_at            INTEGER,
    remove_at             INTEGER
) STRICT;

CREATE TABLE replay_marks (
    key        TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE INDEX replay_marks_expires_at ON replay_marks (expires_at);

-- grant_id is '' when no grant was used and has no foreign key: a token record outlives the
-- grant's row only until it expires, and revocation is read through a LEFT JOIN.
CREATE TABLE issued_tokens (
    jti        TEXT    NOT NULL PRIMARY KEY,
    client_id  TEXT    NOT NULL,
    subject    TEXT    NOT NULL DEFAULT '',
    audience   TEXT    NOT NULL DEFAULT '',
    grant_id   TEXT    NOT NULL DEFAULT '',
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE INDEX issued_tokens_expires_at ON issued_tokens (expires_at);

CREATE TABLE audit_log (
    id               TEXT    NOT NULL PRIMARY KEY,
    time             INTEGER NOT NULL,
    event            TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    reason           TEXT    NOT NULL DEFAULT '',
    client_id        TEXT    NOT NULL DEFAULT '',
    agent_id         TEXT    NOT NULL DEFAULT '',
    actor_sub        TEXT    NOT NULL DEFAULT '',
    tenant           TEXT    NOT NULL DEFAULT '',
    delegation_mode  TEXT    NOT NULL DEFAULT '',
    trace_id         TEXT    NOT NULL DEFAULT '',
    session_id       TEXT    NOT NULL DEFAULT '',
    audience         TEXT    NOT NULL DEFAULT '',
    requested_scopes TEXT    NOT NULL DEFAULT '[]',
    granted_scopes   TEXT    NOT NULL DEFAULT '[]',
    envelope_jti     TEXT    NOT NULL DEFAULT '',
    token_jti        TEXT    NOT NULL DEFAULT '',
    grant_id         TEXT    NOT NULL DEFAULT '',
    remote_addr      TEXT    NOT NULL DEFAULT '',
    detail           TEXT
) STRICT;

-- ListAudit reads newest first by (time, id); the filter indexes end in time so a filtered
-- page is still read in order.
CREATE INDEX audit_log_time_id ON audit_log (time DESC, id DESC);
CREATE INDEX audit_log_client_id_time ON audit_log (client_id, time DESC, id DESC);
CREATE INDEX audit_log_actor_sub_time ON audit_log (actor_sub, time DESC, id DESC);
CREATE INDEX audit_log_trace_id ON audit_log (trace_id);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant, time DESC, id DESC);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE issued_tokens;
DROP TABLE replay_marks;
DROP TABLE signing_keys;
DROP TABLE grants;
DROP TABLE audience_resources;
DROP TABLE audiences;
DROP TABLE clients;
