-- Mandate's initial schema, Postgres dialect. The SQLite folder holds the same tables and
-- columns under the same version number.
--
-- Postgres conventions (storage/postgres relies on them):
--   times     timestamptz (microseconds); NULL only in the nullable (zero = unset) columns
--   lists     text[] NOT NULL, '{}' when empty
--   durations bigint whole seconds
--   ids       the columns lists are ordered and paged by are COLLATE "C": byte order, as in
--             SQLite and Go, whatever the database's default collation
--   JSON      jsonb for documents Mandate may query (jwks, audit detail); text where the bytes
--             must come back exactly as written (a key's public JWK)
--
-- The tables are created unqualified, in the first schema of the search_path, so a deployment
-- (or each test) can keep Mandate in a schema of its own.

-- +goose Up
CREATE TABLE clients (
    id                            text        COLLATE "C" NOT NULL PRIMARY KEY,
    name                          text        NOT NULL DEFAULT '',
    token_endpoint_auth_method    text        NOT NULL DEFAULT '',
    secret_hash                   bytea,
    previous_secret_hash          bytea,
    previous_secret_expires_at    timestamptz,
    jwks                          jsonb,
    jwks_uri                      text        NOT NULL DEFAULT '',
    grant_types                   text[]      NOT NULL DEFAULT '{}',
    allowed_tenants               text[]      NOT NULL DEFAULT '{}',
    allowed_audiences             text[]      NOT NULL DEFAULT '{}',
    allowed_scopes                text[]      NOT NULL DEFAULT '{}',
    allowed_modes                 text[]      NOT NULL DEFAULT '{}',
    max_envelope_lifetime_seconds bigint      NOT NULL DEFAULT 0,
    max_token_ttl_seconds         bigint      NOT NULL DEFAULT 0,
    disabled                      boolean     NOT NULL DEFAULT false,
    created_at                    timestamptz NOT NULL,
    updated_at                    timestamptz NOT NULL
);

CREATE TABLE audiences (
    id                text        COLLATE "C" NOT NULL PRIMARY KEY,
    name              text        NOT NULL DEFAULT '',
    scopes            text[]      NOT NULL DEFAULT '{}',
    allowed_modes     text[]      NOT NULL DEFAULT '{}',
    token_ttl_seconds bigint      NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

-- One row per RFC 8707 resource indicator. The primary key makes a URI name one audience only.
CREATE TABLE audience_resources (
    uri         text NOT NULL PRIMARY KEY,
    audience_id text COLLATE "C" NOT NULL REFERENCES audiences (id) ON DELETE CASCADE
);

CREATE INDEX audience_resources_audience_id ON audience_resources (audience_id);

CREATE TABLE grants (
    id            text        COLLATE "C" NOT NULL PRIMARY KEY,
    tenant        text        NOT NULL,
    subject       text        NOT NULL,
    client_id     text        COLLATE "C" NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    agent_id      text        NOT NULL DEFAULT '',
    audiences     text[]      NOT NULL DEFAULT '{}',
    scopes        text[]      NOT NULL DEFAULT '{}',
    modes         text[]      NOT NULL DEFAULT '{}',
    not_before    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    created_by    text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoked_by    text        NOT NULL DEFAULT '',
    revoke_reason text        NOT NULL DEFAULT ''
);

-- FindActiveGrants' lookup. Deleting a client cascades by client_id alone, which that index
-- (tenant first) cannot serve, hence the second one.
CREATE INDEX grants_tenant_client_subject ON grants (tenant, client_id, subject);
CREATE INDEX grants_client_id ON grants (client_id);

CREATE TABLE signing_keys (
    kid                   text        NOT NULL PRIMARY KEY,
    alg                   text        NOT NULL,
    status                text        NOT NULL,
    public_jwk            text        NOT NULL,
    encrypted_private_key bytea       NOT NULL,
    created_at            timestamptz NOT NULL,
    activates_at          timestamptz NOT NULL,
    retired_at            timestamptz,
    remove_at             timestamptz
);

CREATE TABLE replay_marks (
    key        text        NOT NULL PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE INDEX replay_marks_expires_at ON replay_marks (expires_at);

-- grant_id is '' when no grant was used and has no foreign key: a token record outlives the
-- grant's row only until it expires, and revocation is read through a LEFT JOIN.
CREATE TABLE issued_tokens (
    jti        text        NOT NULL PRIMARY KEY,
    client_id  text        NOT NULL,
    subject    text        NOT NULL DEFAULT '',
    audience   text        NOT NULL DEFAULT '',
    grant_id   text        NOT NULL DEFAULT '',
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);

CREATE INDEX issued_tokens_expires_at ON issued_tokens (expires_at);

CREATE TABLE audit_log (
    id               text        COLLATE "C" NOT NULL PRIMARY KEY,
    time             timestamptz NOT NULL,
    event            text        NOT NULL,
    outcome          text        NOT NULL,
    reason           text        NOT NULL DEFAULT '',
    client_id        text        NOT NULL DEFAULT '',
    agent_id         text        NOT NULL DEFAULT '',
    actor_sub        text        NOT NULL DEFAULT '',
    tenant           text        NOT NULL DEFAULT '',
    delegation_mode  text        NOT NULL DEFAULT '',
    trace_id         text        NOT NULL DEFAULT '',
    session_id       text        NOT NULL DEFAULT '',
    audience         text        NOT NULL DEFAULT '',
    requested_scopes text[]      NOT NULL DEFAULT '{}',
    granted_scopes   text[]      NOT NULL DEFAULT '{}',
    envelope_jti     text        NOT NULL DEFAULT '',
    token_jti        text        NOT NULL DEFAULT '',
    grant_id         text        NOT NULL DEFAULT '',
    remote_addr      text        NOT NULL DEFAULT '',
    detail           jsonb
);

-- ListAudit reads newest first by (time, id); the filter indexes end in (time, id) so a
-- filtered page is still read in order and the keyset cursor can seek into it.
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
