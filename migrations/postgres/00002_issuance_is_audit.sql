-- A granted decision's audit record becomes the issued token's record and, for a token
-- exchange, the envelope's replay mark: an exchange writes one row where it wrote three
-- (replay_marks, issued_tokens, audit_log). Token revocations, which are rare, get a table of
-- their own; replay_marks stays for client assertion jtis.
--
-- Stop every replica of the previous version before applying this: it writes replay_marks and
-- issued_tokens, which this version no longer reads.

-- +goose Up
ALTER TABLE audit_log
    ADD COLUMN token_expires_at timestamptz,          -- set only on an issuance's record
    ADD COLUMN replay_key       text NOT NULL DEFAULT '';

CREATE TABLE token_revocations (
    jti        text        NOT NULL PRIMARY KEY,
    revoked_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Tokens issued before this version keep their records...
UPDATE audit_log a SET token_expires_at = t.expires_at
FROM issued_tokens t
WHERE a.token_jti = t.jti AND a.outcome = 'granted'
  AND a.event IN ('token_exchange', 'client_credentials');

INSERT INTO token_revocations (jti, revoked_at, expires_at)
SELECT jti, revoked_at, expires_at FROM issued_tokens WHERE revoked_at IS NOT NULL;

-- ...and envelopes exchanged before it stay used: each live envelope mark moves onto the
-- newest record of its exchange. The key is exchange.replayKey's,
-- eie|<bytes>:<client_id>|<bytes>:<jti>|<audience>; envelopes live at most an hour, so only
-- the last two hours of records can hold one.
UPDATE audit_log a SET replay_key = x.key
FROM (
    SELECT DISTINCT ON (m.key) m.key, r.id
    FROM replay_marks m
    JOIN audit_log r ON m.key = 'eie|' || octet_length(r.client_id) || ':' || r.client_id
                              || '|' || octet_length(r.envelope_jti) || ':' || r.envelope_jti
                              || '|' || r.audience
    WHERE m.key LIKE 'eie|%' AND m.expires_at > now()
      AND r.event = 'token_exchange' AND r.outcome = 'granted' AND r.token_expires_at IS NOT NULL
      AND r.time > now() - interval '2 hours'
    ORDER BY m.key, r.time DESC, r.id DESC
) x
WHERE a.id = x.id;

DELETE FROM replay_marks WHERE key LIKE 'eie|%';
DROP TABLE issued_tokens;

-- GetTokenState's lookup, and the uniqueness rules RecordIssuance relies on. Only issuances
-- are indexed: a revocation's audit record names the token too.
CREATE UNIQUE INDEX audit_log_token_jti ON audit_log (token_jti) WHERE token_expires_at IS NOT NULL;
CREATE UNIQUE INDEX audit_log_replay_key ON audit_log (replay_key) WHERE replay_key <> '';

-- +goose Down
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

-- The token's sub is not kept; it follows from the mode (SPEC §5).
INSERT INTO issued_tokens (jti, client_id, subject, audience, grant_id, issued_at, expires_at, revoked_at)
SELECT a.token_jti, a.client_id,
       CASE WHEN a.event = 'client_credentials' OR a.delegation_mode = 'service_identity'
            THEN a.client_id ELSE a.actor_sub END,
       a.audience, a.grant_id, date_trunc('second', a.time), a.token_expires_at, r.revoked_at
FROM audit_log a LEFT JOIN token_revocations r ON r.jti = a.token_jti
WHERE a.token_expires_at IS NOT NULL AND a.token_expires_at > now() - interval '1 minute';

-- A mark lived at most an hour and two minutes past its exchange (lifetime and clock skew).
INSERT INTO replay_marks (key, expires_at)
SELECT replay_key, time + interval '1 hour 2 minutes' FROM audit_log
WHERE replay_key <> '' AND time > now() - interval '1 hour 2 minutes'
ON CONFLICT (key) DO NOTHING;

DROP INDEX audit_log_replay_key;
DROP INDEX audit_log_token_jti;
DROP TABLE token_revocations;
ALTER TABLE audit_log DROP COLUMN replay_key, DROP COLUMN token_expires_at;
