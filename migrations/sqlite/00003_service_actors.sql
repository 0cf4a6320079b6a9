-- Service actors become an explicit client permission (SPEC §4, §7): a client may present
-- actor.type = service only for the actor.sub values listed here. Every token and audit
-- record says which kind of actor it is, so a downstream API never reads a service's
-- actor_sub as a user.

-- +goose Up
ALTER TABLE clients ADD COLUMN service_actors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE audit_log ADD COLUMN actor_type TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE audit_log DROP COLUMN actor_type;
ALTER TABLE clients DROP COLUMN service_actors;
