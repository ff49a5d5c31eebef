package main

// The blueprint's lifecycle jobs (examples/preview.yaml `jobs:`), each a one-shot role of
// the same binary:
//
//	demo migrate   the api's schema: column customers.plan and an index on it (idempotent);
//	               MIGRATION_HOLD_LOCK=1.5s then holds customers locked that long, as a
//	               migration of a big table would; MIGRATION_FAIL makes it fail
//	demo seed      once per preview: records the seed in table seed_runs
//	demo farewell  at teardown: tells whoever listens on the database (NOTIFY)
//
// What a job writes to $PREVIEW_OUTPUT (KEY=value lines) becomes a variable of every
// application: the api answers SCHEMA_VERSION and SEEDED_AT.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
)

// schemaVersion is what this commit's migration leaves.
const schemaVersion = "2"

// migrations are the statements of `demo migrate`, in order; each may run again.
var migrations = []string{
	// A constant default: PostgreSQL ≥ 11 adds it without rewriting the table.
	"ALTER TABLE customers ADD COLUMN IF NOT EXISTS plan text NOT NULL DEFAULT 'free'",
	"CREATE INDEX IF NOT EXISTS customers_plan_idx ON customers (plan)",
}

func runJob(role string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		return errors.New("DATABASE_URL is not set")
	}
	secrets := secretsOf(databaseURL)
	if os.Getenv("MIGRATION_FAIL") != "" && role == "migrate" {
		// A broken migration that, as real ones do, prints its connection string: the
		// engine masks it in the excerpt it shows on the pull request.
		log.Printf("migrate: applying step 1 on %s", databaseURL)
		return errors.New("migrate: step 1 failed: relation \"customers_v3\" does not exist")
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return errors.New(redact(err.Error(), secrets))
	}
	defer func() { _ = conn.Close(context.Background()) }()
	switch role {
	case "migrate":
		for _, statement := range migrations {
			if _, err := conn.Exec(ctx, statement); err != nil {
				return errors.New(redact(err.Error(), secrets))
			}
		}
		if hold := envDuration("MIGRATION_HOLD_LOCK", 0); hold > 0 {
			// Plays a migration on a big table: writers (and readers) wait this long.
			if err := holdLock(ctx, conn, hold); err != nil {
				return errors.New(redact(err.Error(), secrets))
			}
		}
		log.Printf("migrate: schema version %s", schemaVersion)
		return writeOutputs(map[string]string{"SCHEMA_VERSION": schemaVersion})
	case "seed":
		_, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS seed_runs "+
			"(id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
		if err == nil {
			var at time.Time
			err = conn.QueryRow(ctx, "INSERT INTO seed_runs DEFAULT VALUES RETURNING at").Scan(&at)
			if err == nil {
				log.Printf("seed: seeded at %s", at.UTC().Format(time.RFC3339))
				return writeOutputs(map[string]string{"SEEDED_AT": at.UTC().Format(time.RFC3339Nano)})
			}
		}
		return errors.New(redact(err.Error(), secrets))
	case "farewell":
		_, err := conn.Exec(ctx, "SELECT pg_notify('preview_farewell', $1)", os.Getenv("HEAD_SHA"))
		if err != nil {
			return errors.New(redact(err.Error(), secrets))
		}
		log.Printf("farewell: told the database")
		return nil
	}
	return fmt.Errorf("unknown job %q", role)
}

// writeOutputs writes KEY=value lines where the engine reads a job's outputs.
func writeOutputs(outputs map[string]string) error {
	path := os.Getenv("PREVIEW_OUTPUT")
	if path == "" {
		return nil // run by hand, outside a preview
	}
	text := ""
	for key, value := range outputs {
		text += key + "=" + value + "\n"
	}
	return os.WriteFile(path, []byte(text), 0o644)
}

// customerQuery reads the column the migration adds: NULL while it is not there yet.
const customerQuery = "SELECT name, email, to_jsonb(c) ->> 'plan' FROM customers c ORDER BY id LIMIT 1"

// holdLock keeps customers locked against everyone for `hold`, in one transaction.
func holdLock(ctx context.Context, conn *pgx.Conn, hold time.Duration) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_sleep($1)", hold.Seconds()); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
