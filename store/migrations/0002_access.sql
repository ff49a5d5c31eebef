-- Who may call the API, which webhook deliveries were seen, and what was done by whom.

-- Only the SHA-256 of a token is kept: a leaked table grants nothing.
CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_sha256 text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    name         text        NOT NULL,
    project_id   bigint      REFERENCES projects (id) ON DELETE CASCADE,
    admin        boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    last_used_at timestamptz,
    -- A token is either an admin token or scoped to exactly one project.
    CHECK (admin = (project_id IS NULL))
);

-- GitHub/GitLab redeliver webhooks: the delivery id makes handling them idempotent.
CREATE TABLE webhook_deliveries (
    delivery_id text PRIMARY KEY,
    event       text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    outcome     text
);
CREATE INDEX webhook_deliveries_received_at ON webhook_deliveries (received_at);

-- Who did what to which object, and when. Never a value (secret or not).
-- `project` is a name, not a foreign key: the trail outlives a deleted project.
CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor   text        NOT NULL,
    action  text        NOT NULL,
    object  text        NOT NULL,
    project text
);
CREATE INDEX audit_log_project ON audit_log (project, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
