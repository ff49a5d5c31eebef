package main

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// visitsKey is the Redis key the api counts its answers in.
const visitsKey = "demo:visits"

// Customer is the first row of table customers.
type Customer struct {
	Name  string  `json:"name"`
	Email string  `json:"email"`
	Plan  *string `json:"plan"` // the column `demo migrate` adds; null before it ran
}

// APIAnswer is what GET / on the api returns (and what the web page reads). A part that
// failed is null, with the reason in its *_error field.
type APIAnswer struct {
	Commit        string    `json:"commit"`
	HeadSHA       string    `json:"head_sha"`
	SchemaVersion string    `json:"schema_version"` // outputs of the blueprint's jobs
	SeededAt      string    `json:"seeded_at"`
	Customer      *Customer `json:"customer"`
	CustomerError string    `json:"customer_error,omitempty"`
	Visits        *int64    `json:"visits"`
	VisitsError   string    `json:"visits_error,omitempty"`
}

type api struct {
	db       *pgxpool.Pool // nil: dbError says why
	dbError  string
	cache    *redis.Client // nil: cacheError says why
	cacheErr string
	secrets  []string
}

func newAPI() *api {
	databaseURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	a := &api{secrets: secretsOf(databaseURL, redisURL)}
	a.db, a.dbError = openDatabase(databaseURL)
	if a.dbError != "" {
		a.dbError = redact(a.dbError, a.secrets)
	}
	if redisURL == "" {
		a.cacheErr = "REDIS_URL is not set"
	} else if options, err := redis.ParseURL(redisURL); err != nil {
		a.cacheErr = redact("REDIS_URL: "+err.Error(), a.secrets)
	} else {
		// Fail fast when Redis is away: the answer says so instead of hanging.
		options.DialTimeout, options.ReadTimeout, options.WriteTimeout = 2*time.Second, 2*time.Second, 2*time.Second
		options.MaxRetries = 1
		options.DisableIdentity = true // CLIENT SETINFO is Redis ≥ 7.2
		a.cache = redis.NewClient(options)
	}
	return a
}

// openDatabase makes a pool without connecting yet (the database may come up after us);
// a bad URL is an error string, since the api answers even then.
func openDatabase(databaseURL string) (*pgxpool.Pool, string) {
	if databaseURL == "" {
		return nil, "DATABASE_URL is not set"
	}
	config, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, "DATABASE_URL: " + err.Error()
	}
	config.MaxConns = 4
	config.ConnConfig.ConnectTimeout = 3 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), config)
	if err != nil {
		return nil, err.Error()
	}
	return pool, ""
}

func (a *api) close() {
	if a.db != nil {
		a.db.Close()
	}
	if a.cache != nil {
		_ = a.cache.Close()
	}
}

func (a *api) customer(ctx context.Context) (*Customer, string) {
	if a.db == nil {
		return nil, a.dbError
	}
	var c Customer
	err := a.db.QueryRow(ctx, customerQuery).Scan(&c.Name, &c.Email, &c.Plan)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, "table customers is empty"
	}
	if err != nil {
		return nil, redact(err.Error(), a.secrets)
	}
	return &c, ""
}

func (a *api) visit(ctx context.Context) (*int64, string) {
	if a.cache == nil {
		return nil, a.cacheErr
	}
	visits, err := a.cache.Incr(ctx, visitsKey).Result()
	if err != nil {
		return nil, redact(err.Error(), a.secrets)
	}
	return &visits, ""
}

func (a *api) root(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	answer := APIAnswer{Commit: commit, HeadSHA: os.Getenv("HEAD_SHA"),
		SchemaVersion: os.Getenv("SCHEMA_VERSION"), SeededAt: os.Getenv("SEEDED_AT")}
	answer.Customer, answer.CustomerError = a.customer(ctx)
	answer.Visits, answer.VisitsError = a.visit(ctx)
	for _, problem := range []string{answer.CustomerError, answer.VisitsError} {
		if problem != "" {
			log.Printf("api: %s", problem) // already redacted
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(answer)
}

func runAPI(ctx context.Context, addr string, drain time.Duration) error {
	a := newAPI()
	defer a.close()
	mux := http.NewServeMux()
	health(mux)
	mux.HandleFunc("GET /{$}", a.root)
	return serve(ctx, "api", addr, mux, drain)
}
