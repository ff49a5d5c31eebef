-- Redis caches of a source environment (domain.blueprint.Cache), one row per cache,
-- with the layout every element table shares (see README.md).

CREATE TABLE caches (
    project_id bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    position   integer     NOT NULL,  -- blueprint order, so an export equals its import
    document   jsonb       NOT NULL,  -- domain.blueprint.Cache
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);
