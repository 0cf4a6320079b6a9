-- What happens to a client's grants and tokens when it is deleted or disabled, and bootstrap
-- once per store (SPEC §6, §7). The SQLite file is the same migration.
--
--   * Deleting a client no longer deletes its grants: they stay, revoked (reason
--     client_deleted), so the audit trail keeps what they name, and they can no longer be
--     lost before their tokens expire. The foreign key goes; the application revokes them in
--     the deletion's transaction, and CreateGrant checks (and share-locks) the client row
--     itself.
--   * clients.disabled_at is when the client was last disabled: its tokens issued before
--     then stay inactive even once it is enabled again.
--   * markers records one-time facts about the store. 'bootstrap' is set, in the same
--     transaction, when the first admin client is created: a store that ever had one never
--     gets mandate-admin back at a later start. Stores that were bootstrapped before this
--     version are marked here.

-- +goose Up
ALTER TABLE grants DROP CONSTRAINT grants_client_id_fkey;

ALTER TABLE clients ADD COLUMN disabled_at timestamptz;

CREATE TABLE markers (
    name       text        NOT NULL PRIMARY KEY,
    created_at timestamptz NOT NULL
);

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
DELETE FROM grants g WHERE NOT EXISTS (SELECT 1 FROM clients c WHERE c.id = g.client_id);
ALTER TABLE grants ADD CONSTRAINT grants_client_id_fkey
    FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE;
