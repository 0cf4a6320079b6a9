-- The Postgres migration of this number partitions the audit log by day and, since a unique
-- index there must include the partition key, moves envelope replay keys to issuance_keys
-- and stops checking token ids for uniqueness (they are random). SQLite has no partitions,
-- but keeps one contract with Postgres: replay keys live in issuance_keys, kept until the
-- envelope has expired, and retention deletes old records (in batches) without touching
-- replay protection.

-- +goose Up
CREATE TABLE issuance_keys (
    key        TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Keys of envelopes that may still be live move over. An envelope lived at most an hour, and
-- is accepted 60 s past its exp: a key used more than an hour and two minutes ago is free.
INSERT INTO issuance_keys (key, expires_at)
SELECT replay_key, max(time) + 3720000000 FROM audit_log
WHERE replay_key <> '' AND time > (unixepoch() - 3720) * 1000000
GROUP BY replay_key;

DROP INDEX audit_log_replay_key;
ALTER TABLE audit_log DROP COLUMN replay_key;
DROP INDEX audit_log_token_jti;
CREATE INDEX audit_log_token_jti ON audit_log (token_jti) WHERE token_expires_at IS NOT NULL;

-- +goose Down
ALTER TABLE audit_log ADD COLUMN replay_key TEXT NOT NULL DEFAULT '';
UPDATE audit_log
SET replay_key = 'eie|' || length(CAST(client_id AS BLOB)) || ':' || client_id
              || '|' || length(CAST(envelope_jti AS BLOB)) || ':' || envelope_jti || '|' || audience
WHERE id IN (
    SELECT (SELECT r.id FROM audit_log r
            WHERE k.key = 'eie|' || length(CAST(r.client_id AS BLOB)) || ':' || r.client_id
                        || '|' || length(CAST(r.envelope_jti AS BLOB)) || ':' || r.envelope_jti
                        || '|' || r.audience
              AND r.event = 'token_exchange' AND r.outcome = 'granted'
              AND r.token_expires_at IS NOT NULL
              AND r.time > (unixepoch() - 7200) * 1000000
            ORDER BY r.time DESC, r.id DESC LIMIT 1)
    FROM issuance_keys k
);
DROP TABLE issuance_keys;
DROP INDEX audit_log_token_jti;
CREATE UNIQUE INDEX audit_log_token_jti ON audit_log (token_jti) WHERE token_expires_at IS NOT NULL;
CREATE UNIQUE INDEX audit_log_replay_key ON audit_log (replay_key) WHERE replay_key <> '';
