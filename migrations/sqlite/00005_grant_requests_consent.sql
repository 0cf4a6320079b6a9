-- SPEC §11: audiences say whether users may consent to them; clients ask for grants (grant
-- requests), users approve them on the consent page (consent records) after signing in
-- (sessions). The Postgres file is the same migration.

-- +goose Up
ALTER TABLE audiences ADD COLUMN user_consent TEXT NOT NULL DEFAULT '';
ALTER TABLE audiences ADD COLUMN max_consent_duration_seconds INTEGER NOT NULL DEFAULT 0;

CREATE TABLE grant_requests (
    id               TEXT    NOT NULL PRIMARY KEY,
    client_id        TEXT    NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    tenant           TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    agent_id         TEXT    NOT NULL DEFAULT '',
    audiences        TEXT    NOT NULL DEFAULT '[]',
    scopes           TEXT    NOT NULL DEFAULT '[]',
    modes            TEXT    NOT NULL DEFAULT '[]',
    duration_seconds INTEGER NOT NULL,
    purpose          TEXT    NOT NULL DEFAULT '',
    state            TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    decided_at       INTEGER,
    decided_by       TEXT    NOT NULL DEFAULT '',
    grant_id         TEXT    NOT NULL DEFAULT ''
) STRICT;

-- The consent page lists a user's pending requests; deleting a client cascades by client_id.
CREATE INDEX grant_requests_tenant_subject ON grant_requests (tenant, subject, id);
CREATE INDEX grant_requests_client_id ON grant_requests (client_id, id);

-- One record per grant, gone with it.
CREATE TABLE consent_records (
    grant_id    TEXT    NOT NULL PRIMARY KEY REFERENCES grants (id) ON DELETE CASCADE,
    request_id  TEXT    NOT NULL DEFAULT '',
    approved_by TEXT    NOT NULL,
    approved_at INTEGER NOT NULL,
    remote_addr TEXT    NOT NULL DEFAULT '',
    text        TEXT    NOT NULL
) STRICT;

CREATE TABLE sessions (
    id             TEXT    NOT NULL PRIMARY KEY,
    subject        TEXT    NOT NULL DEFAULT '',
    tenant         TEXT    NOT NULL DEFAULT '',
    name           TEXT    NOT NULL DEFAULT '',
    csrf_token     TEXT    NOT NULL DEFAULT '',
    login_state    TEXT    NOT NULL DEFAULT '',
    login_nonce    TEXT    NOT NULL DEFAULT '',
    login_verifier TEXT    NOT NULL DEFAULT '',
    return_to      TEXT    NOT NULL DEFAULT '',
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_last_seen_at ON sessions (last_seen_at);

-- +goose Down
DROP TABLE sessions;
DROP TABLE consent_records;
DROP TABLE grant_requests;
ALTER TABLE audiences DROP COLUMN max_consent_duration_seconds;
ALTER TABLE audiences DROP COLUMN user_consent;
