-- SPEC §11: audiences say whether users may consent to them; clients ask for grants (grant
-- requests), users approve them on the consent page (consent records) after signing in
-- (sessions). The SQLite file is the same migration.

-- +goose Up
ALTER TABLE audiences
    ADD COLUMN user_consent                 text   NOT NULL DEFAULT '',
    ADD COLUMN max_consent_duration_seconds bigint NOT NULL DEFAULT 0;

CREATE TABLE grant_requests (
    id               text        COLLATE "C" NOT NULL PRIMARY KEY,
    client_id        text        COLLATE "C" NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    tenant           text        NOT NULL,
    subject          text        NOT NULL,
    agent_id         text        NOT NULL DEFAULT '',
    audiences        text[]      NOT NULL DEFAULT '{}',
    scopes           text[]      NOT NULL DEFAULT '{}',
    modes            text[]      NOT NULL DEFAULT '{}',
    duration_seconds bigint      NOT NULL,
    purpose          text        NOT NULL DEFAULT '',
    state            text        NOT NULL,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    decided_at       timestamptz,
    decided_by       text        NOT NULL DEFAULT '',
    grant_id         text        NOT NULL DEFAULT ''
);

-- The consent page lists a user's pending requests; deleting a client cascades by client_id.
CREATE INDEX grant_requests_tenant_subject ON grant_requests (tenant, subject, id);
CREATE INDEX grant_requests_client_id ON grant_requests (client_id, id);

-- One record per grant, gone with it.
CREATE TABLE consent_records (
    grant_id    text        COLLATE "C" NOT NULL PRIMARY KEY REFERENCES grants (id) ON DELETE CASCADE,
    request_id  text        NOT NULL DEFAULT '',
    approved_by text        NOT NULL,
    approved_at timestamptz NOT NULL,
    remote_addr text        NOT NULL DEFAULT '',
    text        text        NOT NULL
);

CREATE TABLE sessions (
    id             text        NOT NULL PRIMARY KEY,
    subject        text        NOT NULL DEFAULT '',
    tenant         text        NOT NULL DEFAULT '',
    name           text        NOT NULL DEFAULT '',
    csrf_token     text        NOT NULL DEFAULT '',
    login_state    text        NOT NULL DEFAULT '',
    login_nonce    text        NOT NULL DEFAULT '',
    login_verifier text        NOT NULL DEFAULT '',
    return_to      text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);

CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_last_seen_at ON sessions (last_seen_at);

-- +goose Down
DROP TABLE sessions;
DROP TABLE consent_records;
DROP TABLE grant_requests;
ALTER TABLE audiences DROP COLUMN max_consent_duration_seconds, DROP COLUMN user_consent;
