-- The environment model: projects and what their source environments are made of.
-- Each entity is kept as its validated JSON document (the domain model) plus the key
-- columns that identify it, so the store never drifts from domain/blueprint.py.

CREATE TABLE projects (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text        NOT NULL UNIQUE,
    repository         text        NOT NULL,
    source_environment text        NOT NULL DEFAULT 'production',
    document           jsonb       NOT NULL,  -- domain.blueprint.Project
    network            jsonb       NOT NULL,  -- domain.blueprint.Network
    policy             jsonb       NOT NULL,  -- domain.blueprint.PreviewPolicy
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- Git hosts treat owner/name case-insensitively: so does the store.
CREATE UNIQUE INDEX projects_repository_key ON projects (lower(repository));

CREATE TABLE environments (
    project_id bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    position   integer     NOT NULL,
    document   jsonb       NOT NULL,  -- domain.blueprint.Environment
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

CREATE TABLE applications (
    project_id bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    position   integer     NOT NULL,  -- blueprint order, so an export equals its import
    document   jsonb       NOT NULL,  -- domain.blueprint.Application
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

CREATE TABLE databases (
    project_id bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    position   integer     NOT NULL,
    document   jsonb       NOT NULL,  -- domain.blueprint.Database
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

-- Plain variables (values are not secret). `environment` names the environment of an
-- environment-scoped variable; the blueprint's Variable has no such field because a
-- blueprint holds exactly one environment.
CREATE TABLE variables (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key         text        NOT NULL CHECK (key ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    scope       text        NOT NULL CHECK (scope IN ('project', 'environment', 'application')),
    environment text,
    application text,
    applies_to  text        NOT NULL CHECK (applies_to IN ('production', 'previews', 'both')),
    kind        text        NOT NULL CHECK (kind IN ('value', 'alias', 'override', 'secret')),
    value       text        NOT NULL DEFAULT '',
    position    integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((scope = 'environment') = (environment IS NOT NULL)),
    CHECK ((scope = 'application') = (application IS NOT NULL)),
    CHECK (kind <> 'secret' OR value = ''),
    FOREIGN KEY (project_id, environment) REFERENCES environments (project_id, name)
        ON DELETE CASCADE,
    FOREIGN KEY (project_id, application) REFERENCES applications (project_id, name)
        ON DELETE CASCADE,
    UNIQUE NULLS NOT DISTINCT (project_id, key, scope, environment, application, applies_to)
);

-- Secret values, sealed (AES-256-GCM envelope, domain.secrets.SealedValue); never in clear.
CREATE TABLE secrets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key         text        NOT NULL CHECK (key ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    scope       text        NOT NULL CHECK (scope IN ('project', 'environment', 'application')),
    environment text,
    application text,
    applies_to  text        NOT NULL CHECK (applies_to IN ('production', 'previews', 'both')),
    sealed      jsonb       NOT NULL CHECK (
        jsonb_typeof(sealed) = 'object'
        AND sealed ?& ARRAY['key_id', 'wrapped_key', 'nonce', 'ciphertext']
        -- nothing else: no field where a clear value could hide
        AND sealed - ARRAY['key_id', 'wrapped_key', 'nonce', 'ciphertext'] = '{}'::jsonb
    ),
    -- Which master key wraps the data key: rotation finds what to re-wrap by it.
    key_id      text        GENERATED ALWAYS AS (sealed ->> 'key_id') STORED,
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL,
    CHECK ((scope = 'environment') = (environment IS NOT NULL)),
    CHECK ((scope = 'application') = (application IS NOT NULL)),
    FOREIGN KEY (project_id, environment) REFERENCES environments (project_id, name)
        ON DELETE CASCADE,
    FOREIGN KEY (project_id, application) REFERENCES applications (project_id, name)
        ON DELETE CASCADE,
    UNIQUE NULLS NOT DISTINCT (project_id, key, scope, environment, application, applies_to)
);
CREATE INDEX secrets_key_id ON secrets (key_id);
