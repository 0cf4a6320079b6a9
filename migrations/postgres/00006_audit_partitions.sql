-- The audit log becomes a table partitioned by day (SPEC §8): at thousands of exchanges a
-- second it grows by hundreds of millions of rows a day, and retention must drop whole days,
-- not delete rows under the token endpoint's writes. A unique index on a partitioned table
-- must include the partition key, so the two one-time rules that lived in the log's unique
-- indexes move:
--
--   - an envelope's replay key goes to issuance_keys, a small table of its own, written in the
--     same statement as the issuance and kept until the envelope has expired: replay
--     protection stays exact across days;
--   - token ids are random (storage.NewID) and no longer checked for uniqueness; a token's
--     record is found by its jti within the second of its iat, which prunes to one day.
--
-- The existing rows are not copied: the old table becomes the partition audit_log_history,
-- holding everything up to the end of its newest record's day (UTC); the server adds day
-- partitions after it
-- (storage/postgres, PrepareAuditLog) and retention deletes from it in batches until it has
-- aged out. Attaching it scans it once and builds one index, (time, id), the new primary key.
-- Stop every replica of the previous version before applying this.

-- +goose Up
CREATE TABLE issuance_keys (
    key        text        COLLATE "C" NOT NULL PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

-- Keys of envelopes that may still be live move over. An envelope lived at most an hour, and
-- is accepted 60 s past its exp: a key used more than an hour and two minutes ago is free.
INSERT INTO issuance_keys (key, expires_at)
SELECT replay_key, max(time) + interval '1 hour 2 minutes' FROM audit_log
WHERE replay_key <> '' AND time > now() - interval '1 hour 2 minutes'
GROUP BY replay_key;

ALTER TABLE audit_log RENAME TO audit_log_history;
ALTER TABLE audit_log_history DROP CONSTRAINT audit_log_pkey;
DROP INDEX audit_log_replay_key;
DROP INDEX audit_log_token_jti;
DROP INDEX audit_log_time_id;
ALTER TABLE audit_log_history DROP COLUMN replay_key;
-- Kept, and attached below to the parent's indexes of the same definition.
ALTER INDEX audit_log_client_id_time RENAME TO audit_log_history_client_id_time;
ALTER INDEX audit_log_actor_sub_time RENAME TO audit_log_history_actor_sub_time;
ALTER INDEX audit_log_trace_id RENAME TO audit_log_history_trace_id;
ALTER INDEX audit_log_tenant_time RENAME TO audit_log_history_tenant_time;

CREATE TABLE audit_log (
    id               text        COLLATE "C" NOT NULL,
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
    detail           jsonb,
    token_expires_at timestamptz,                     -- set only on an issuance's record
    actor_type       text        NOT NULL DEFAULT '',
    -- ListAudit's order, read backwards; the keyset cursor seeks into it.
    PRIMARY KEY (time, id)
) PARTITION BY RANGE (time);

-- Only what the audit API's filters need (each ends in (time, id), so a filtered page is read
-- in order and the cursor seeks into it), and GetTokenState's lookup of an issuance.
CREATE INDEX audit_log_client_id_time ON audit_log (client_id, time DESC, id DESC);
CREATE INDEX audit_log_actor_sub_time ON audit_log (actor_sub, time DESC, id DESC);
CREATE INDEX audit_log_trace_id ON audit_log (trace_id);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant, time DESC, id DESC);
CREATE INDEX audit_log_token_jti ON audit_log (token_jti) WHERE token_expires_at IS NOT NULL;

-- +goose StatementBegin
DO $$
DECLARE
    newest timestamptz;
    upper  timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    -- Up to the end of the newest record's day (a clock that ran ahead included), or, for an
    -- empty log, up to today: today's records then go to a day partition of their own.
    SELECT max(time) INTO newest FROM audit_log_history;
    IF newest IS NOT NULL THEN
        upper := date_trunc('day', newest AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day';
    END IF;
    EXECUTE format('ALTER TABLE audit_log ATTACH PARTITION audit_log_history FOR VALUES FROM (MINVALUE) TO (%L)', upper);
END
$$;
-- +goose StatementEnd

-- Whatever falls outside every day partition (the server keeps them a week ahead) lands here
-- rather than failing a token's write; PrepareAuditLog moves it to its day's partition.
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

-- +goose Down
-- Back to one table, with every record; the live replay keys return to their records.
ALTER TABLE audit_log RENAME TO audit_log_partitioned;
CREATE TABLE audit_log (LIKE audit_log_partitioned INCLUDING DEFAULTS);
ALTER TABLE audit_log ADD COLUMN replay_key text NOT NULL DEFAULT '';
INSERT INTO audit_log (id, time, event, outcome, reason, client_id, agent_id, actor_sub, tenant,
    delegation_mode, trace_id, session_id, audience, requested_scopes, granted_scopes,
    envelope_jti, token_jti, grant_id, remote_addr, detail, token_expires_at, actor_type)
SELECT id, time, event, outcome, reason, client_id, agent_id, actor_sub, tenant,
    delegation_mode, trace_id, session_id, audience, requested_scopes, granted_scopes,
    envelope_jti, token_jti, grant_id, remote_addr, detail, token_expires_at, actor_type
FROM audit_log_partitioned;
DROP TABLE audit_log_partitioned;
-- Only now: the partitioned table's primary key held the name audit_log_pkey.
ALTER TABLE audit_log ADD PRIMARY KEY (id);

UPDATE audit_log a SET replay_key = x.key
FROM (
    SELECT DISTINCT ON (k.key) k.key, r.id
    FROM issuance_keys k
    JOIN audit_log r ON k.key = 'eie|' || octet_length(r.client_id) || ':' || r.client_id
                              || '|' || octet_length(r.envelope_jti) || ':' || r.envelope_jti
                              || '|' || r.audience
    WHERE r.event = 'token_exchange' AND r.outcome = 'granted' AND r.token_expires_at IS NOT NULL
      AND r.time > now() - interval '2 hours'
    ORDER BY k.key, r.time DESC, r.id DESC
) x
WHERE a.id = x.id;
DROP TABLE issuance_keys;

CREATE INDEX audit_log_time_id ON audit_log (time DESC, id DESC);
CREATE INDEX audit_log_client_id_time ON audit_log (client_id, time DESC, id DESC);
CREATE INDEX audit_log_actor_sub_time ON audit_log (actor_sub, time DESC, id DESC);
CREATE INDEX audit_log_trace_id ON audit_log (trace_id);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant, time DESC, id DESC);
CREATE UNIQUE INDEX audit_log_token_jti ON audit_log (token_jti) WHERE token_expires_at IS NOT NULL;
CREATE UNIQUE INDEX audit_log_replay_key ON audit_log (replay_key) WHERE replay_key <> '';
