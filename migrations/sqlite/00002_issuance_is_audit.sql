-- A granted decision's audit record becomes the issued token's record and, for a token
-- exchange, the envelope's replay mark: an exchange writes one row where it wrote three
-- (replay_marks, issued_tokens, audit_log). Token revocations, which are rare, get a table of
-- their own; replay_marks stays for client assertion jtis. The Postgres file is the same
-- migration.

-- +goose Up
ALTER TABLE audit_log ADD COLUMN token_expires_at INTEGER; -- set only on an issuance's record
ALTER TABLE audit_log ADD COLUMN replay_key TEXT NOT NULL DEFAULT '';

CREATE TABLE token_revocations (
    jti        TEXT    NOT NULL PRIMARY KEY,
    revoked_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

-- Tokens issued before this version keep their records...
UPDATE audit_log SET token_expires_at = t.expires_at
FROM issued_tokens t
WHERE audit_log.token_jti = t.jti AND audit_log.outcome = 'granted'
  AND audit_log.event IN ('token_exchange', 'client_credentials');

INSERT INTO token_revocations (jti, revoked_at, expires_at)
SELECT jti, revoked_at, expires_at FROM issued_tokens WHERE revoked_at IS NOT NULL;

-- ...and envelopes exchanged before it stay used: each live envelope mark moves onto the
-- newest record of its exchange. The key is exchange.replayKey's,
-- eie|<bytes>:<client_id>|<bytes>:<jti>|<audience>; envelopes live at most an hour, so only
-- the last two hours of records can hold one.
UPDATE audit_log
SET replay_key = 'eie|' || length(CAST(client_id AS BLOB)) || ':' || client_id
              || '|' || length(CAST(envelope_jti AS BLOB)) || ':' || envelope_jti || '|' || audience
WHERE id IN (
    SELECT (SELECT r.id FROM audit_log r
            WHERE m.key = 'eie|' || length(CAST(r.client_id AS BLOB)) || ':' || r.client_id
                        || '|' || length(CAST(r.envelope_jti AS BLOB)) || ':' || r.envelope_jti
                        || '|' || r.audience
              AND r.event = 'token_exchange' AND r.outcome = 'granted'
              AND r.token_expires_at IS NOT NULL
              AND r.time > (unixepoch() - 7200) * 1000000
            ORDER BY r.time DESC, r.id DESC LIMIT 1)
    FROM replay_marks m
    WHERE m.key LIKE 'eie|%' AND m.expires_at > unixepoch() * 1000000
);

DELETE FROM replay_marks WHERE key LIKE 'eie|%';
DROP TABLE issued_tokens;

-- GetTokenState's lookup, and the uniqueness rules RecordIssuance relies on. Only issuances
-- are indexed: a revocation's audit record names the token too.
CREATE UNIQUE INDEX audit_log_token_jti ON audit_log (token_jti) WHERE token_expires_at IS NOT NULL;
CREATE UNIQUE INDEX audit_log_replay_key ON audit_log (replay_key) WHERE replay_key <> '';

-- +goose Down
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

-- The token's sub is not kept; it follows from the mode (SPEC §5).
INSERT INTO issued_tokens (jti, client_id, subject, audience, grant_id, issued_at, expires_at, revoked_at)
SELECT a.token_jti, a.client_id,
       CASE WHEN a.event = 'client_credentials' OR a.delegation_mode = 'service_identity'
            THEN a.client_id ELSE a.actor_sub END,
       a.audience, a.grant_id, a.time / 1000000 * 1000000, a.token_expires_at, r.revoked_at
FROM audit_log a LEFT JOIN token_revocations r ON r.jti = a.token_jti
WHERE a.token_expires_at IS NOT NULL AND a.token_expires_at > (unixepoch() - 60) * 1000000;

-- A mark lived at most an hour and two minutes past its exchange (lifetime and clock skew).
INSERT INTO replay_marks (key, expires_at)
SELECT replay_key, time + 3720000000 FROM audit_log
WHERE replay_key <> '' AND time > (unixepoch() - 3720) * 1000000
ON CONFLICT (key) DO NOTHING;

DROP INDEX audit_log_replay_key;
DROP INDEX audit_log_token_jti;
DROP TABLE token_revocations;
ALTER TABLE audit_log DROP COLUMN replay_key;
ALTER TABLE audit_log DROP COLUMN token_expires_at;
