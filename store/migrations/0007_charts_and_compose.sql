-- Helm charts of a blueprint (domain.blueprint.Chart): the layout every element table shares.
CREATE TABLE charts (
    project_id bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    position   integer     NOT NULL,
    document   jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

-- A blueprint may describe its services in a Compose file of the repository
-- (domain.blueprint.ComposeSource), read at every deploy from the PR's head commit.
ALTER TABLE projects ADD COLUMN compose jsonb;
