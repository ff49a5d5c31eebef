-- Lifecycle jobs of a blueprint (domain.blueprint.Job): the layout every element table shares.
CREATE TABLE jobs (
    project_id bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    position   integer     NOT NULL,
    document   jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

-- A variable or secret scoped to an element names an application or a job: one
-- foreign key cannot say "either", so two triggers keep what the keys kept. A scoped
-- row must name an element of its project, and goes with that element.
ALTER TABLE variables DROP CONSTRAINT variables_project_id_application_fkey;
ALTER TABLE secrets DROP CONSTRAINT secrets_project_id_application_fkey;

CREATE FUNCTION scoped_element_exists() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.application IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM applications
                       WHERE project_id = NEW.project_id AND name = NEW.application)
       AND NOT EXISTS (SELECT 1 FROM jobs
                       WHERE project_id = NEW.project_id AND name = NEW.application) THEN
        RAISE foreign_key_violation USING MESSAGE = format(
            '%s scoped to %L: no application or job of that name', TG_TABLE_NAME,
            NEW.application);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER variables_scoped_element BEFORE INSERT OR UPDATE ON variables
    FOR EACH ROW EXECUTE FUNCTION scoped_element_exists();
CREATE TRIGGER secrets_scoped_element BEFORE INSERT OR UPDATE ON secrets
    FOR EACH ROW EXECUTE FUNCTION scoped_element_exists();

CREATE FUNCTION scoped_rows_go_with_their_element() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Unless an element of the other kind keeps the name.
    IF NOT EXISTS (SELECT 1 FROM applications WHERE project_id = OLD.project_id
                   AND name = OLD.name)
       AND NOT EXISTS (SELECT 1 FROM jobs WHERE project_id = OLD.project_id
                       AND name = OLD.name) THEN
        DELETE FROM variables WHERE project_id = OLD.project_id AND application = OLD.name;
        DELETE FROM secrets WHERE project_id = OLD.project_id AND application = OLD.name;
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER applications_scoped_rows AFTER DELETE ON applications
    FOR EACH ROW EXECUTE FUNCTION scoped_rows_go_with_their_element();
CREATE TRIGGER jobs_scoped_rows AFTER DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION scoped_rows_go_with_their_element();
