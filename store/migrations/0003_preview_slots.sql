-- One row per live preview: the per-repository limit (policy.max_live_previews) is
-- enforced by claiming a slot before anything else is built.
CREATE TABLE preview_slots (
    environment text PRIMARY KEY,
    repository  text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX preview_slots_repository ON preview_slots (repository);
