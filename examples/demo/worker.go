package main

import (
	"context"
	"encoding/json"
	"log"
	"net/http"
	"os"
	"sync"
	"time"
)

// countReport is what GET / on the worker returns: the last count of customers.
type countReport struct {
	Commit    string     `json:"commit"`
	Customers *int64     `json:"customers"` // nil until a count succeeded
	Error     string     `json:"error,omitempty"`
	Checks    int        `json:"checks"`
	CheckedAt *time.Time `json:"checked_at"`
}

type worker struct {
	mu     sync.Mutex
	report countReport
}

// count counts the customers once and records the outcome.
func (w *worker) count(ctx context.Context, a *api) {
	var customers int64
	problem := a.dbError
	if a.db != nil {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := a.db.QueryRow(ctx, "SELECT count(*) FROM customers").Scan(&customers); err != nil {
			problem = redact(err.Error(), a.secrets)
		}
	}
	now := time.Now().UTC()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.report.Checks++
	w.report.CheckedAt = &now
	w.report.Error = problem
	if problem == "" {
		w.report.Customers = &customers
	} else {
		log.Printf("worker: counting customers: %s", problem)
	}
}

func (w *worker) loop(ctx context.Context, a *api, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		w.count(ctx, a)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (w *worker) root(rw http.ResponseWriter, _ *http.Request) {
	w.mu.Lock()
	report := w.report
	w.mu.Unlock()
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(rw).Encode(report)
}

func runWorker(ctx context.Context, addr string, drain time.Duration) error {
	// Only the database part of the api's clients: the worker has no cache.
	databaseURL := os.Getenv("DATABASE_URL")
	a := &api{secrets: secretsOf(databaseURL)}
	a.db, a.dbError = openDatabase(databaseURL)
	a.dbError = redact(a.dbError, a.secrets)
	defer a.close()

	w := &worker{report: countReport{Commit: commit}}
	every := envDuration("COUNT_INTERVAL", 5*time.Second)
	looping, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	done := make(chan struct{})
	go func() { defer close(done); w.loop(looping, a, every) }()

	mux := http.NewServeMux()
	health(mux)
	mux.HandleFunc("GET /{$}", w.root)
	err := serve(ctx, "worker", addr, mux, drain)
	stopLoop()
	<-done
	return err
}
