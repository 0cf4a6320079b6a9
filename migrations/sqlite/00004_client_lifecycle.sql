-- What happens to a client's grants and tokens when it is deleted or disabled, and bootstrap
-- once per store (SPEC §6, §7). The Postgres file is the same migration.
--
--   * Deleting a client no longer deletes its grants: they stay, revoked (reason
--     client_deleted), so the audit trail keeps what they name, and they can no longer be
--     lost before their tokens expire. grants is rebuilt without its foreign key (SQLite
--     cannot drop one in place); the application revokes them in the deletion's transaction.
--   * clients.disabled_at is when the client was last disabled: its tokens issued before
--     then stay inactive even once it is enabled again.
--   * markers records one-time facts about the store. 'bootstrap' is set, in the same
--     transaction, when the first admin client is created: a store that ever had one never
--     gets mandate-admin back at a later start. Stores that were bootstrapped before this
--     version are marked here.

-- +goose Up
CREATE TABLE grants_new (
    id            TEXT    NOT NULL PRIMARY KEY,
    tenant        TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    client_id     TEXT    NOT NULL,
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

INSERT INTO grants_new (id, tenant, subject, client_id, agent_id, audiences, scopes, modes,
    not_before, expires_at, created_by, created_at, revoked_at, revoked_by, revoke_reason)
SELECT id, tenant, subject, client_id, agent_id, audiences, scopes, modes,
    not_before, expires_at, created_by, created_at, revoked_at, revoked_by, revoke_reason
FROM grants;

DROP TABLE grants;
ALTER TABLE grants_new RENAME TO grants;

-- FindActiveGrants' lookup, and the client's grants (revoked when it is deleted; the list
-- filter).
CREATE INDEX grants_tenant_client_subject ON grants (tenant, client_id, subject);
CREATE INDEX grants_client_id ON grants (client_id);

ALTER TABLE clients ADD COLUMN disabled_at INTEGER;

CREATE TABLE markers (
    name       TEXT    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL
) STRICT;

INSERT INTO markers (name, created_at)
SELECT 'bootstrap', COALESCE(
    (SELECT min(time) FROM audit_log WHERE event = 'admin.bootstrap'),
    (SELECT created_at FROM clients WHERE id = 'mandate-admin'))
WHERE EXISTS (SELECT 1 FROM audit_log WHERE event = 'admin.bootstrap')
   OR EXISTS (SELECT 1 FROM clients WHERE id = 'mandate-admin');

-- +goose Down
DROP TABLE markers;
ALTER TABLE clients DROP COLUMN disabled_at;

-- Version 3 deletes a client's grants with it: those of clients deleted since go now.
CREATE TABLE grants_old (
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

INSERT INTO grants_old (id, tenant, subject, client_id, agent_id, audiences, scopes, modes,
    not_before, expires_at, created_by, created_at, revoked_at, revoked_by, revoke_reason)
SELECT id, tenant, subject, client_id, agent_id, audiences, scopes, modes,
    not_before, expires_at, created_by, created_at, revoked_at, revoked_by, revoke_reason
FROM grants WHERE client_id IN (SELECT id FROM clients);

DROP TABLE grants;
ALTER TABLE grants_old RENAME TO grants;
CREATE INDEX grants_tenant_client_subject ON grants (tenant, client_id, subject);
CREATE INDEX grants_client_id ON grants (client_id);
