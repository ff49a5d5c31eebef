// Command demo is the hello-world application that examples/preview.yaml describes:
// one static binary, three roles. The image's entrypoint picks the role:
//
//	demo web     the page people open (port 3000): what it runs and what the api said
//	demo api     JSON (port 8080): a customer from PostgreSQL and a visit counter in Redis
//	demo worker  a loop that counts customers (port 9090 reports the last count)
//	demo version prints the commit stamped at build time
//	demo probe HOST:PORT   tries one TCP connection (exit 0 if it opened): what a
//	                       container may reach, asked from inside it
//	demo whoami  the uid and gid it runs as, and whether a service account token is mounted
//	demo migrate | seed | farewell   the blueprint's lifecycle jobs (jobs.go)
//
// Settings come from the environment a preview gives every application (DATABASE_URL,
// REDIS_URL, API_URL, NODE_ENV, HEAD_SHA), plus PORT, SHUTDOWN_DELAY and the worker's
// COUNT_INTERVAL; flags override PORT, SHUTDOWN_DELAY and the listen host. Nothing is
// written to disk, and secrets (the passwords inside DATABASE_URL and REDIS_URL) never
// reach a log line or an answer.
//
// On SIGTERM a role stops accepting connections, finishes the requests in flight and
// exits 0. Behind an ingress, set SHUTDOWN_DELAY (e.g. 2s) to keep answering while the
// endpoints drop the pod, so a rollout loses no request.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// commit is stamped at build time: -ldflags "-X main.commit=<sha>".
var commit = "unknown"

const usage = `usage: demo web|api|worker [-host HOST] [-port PORT] [-drain DURATION]
       demo version | demo probe HOST:PORT | demo whoami | demo migrate|seed|farewell`

// tokenPath is where Kubernetes mounts a service account token, when it mounts one.
const tokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	role, args := os.Args[1], os.Args[2:]
	defaults := map[string]int{"web": 3000, "api": 8080, "worker": 9090}
	switch role {
	case "version":
		fmt.Println(commit)
		return
	case "probe":
		os.Exit(probe(args))
	case "whoami":
		_, err := os.Stat(tokenPath)
		fmt.Printf("uid=%d gid=%d token=%t\n", os.Getuid(), os.Getgid(), err == nil)
		return
	case "migrate", "seed", "farewell":
		if err := runJob(role); err != nil {
			log.Printf("demo %s: %v", role, err)
			os.Exit(1)
		}
		return
	}
	defaultPort, known := defaults[role]
	if !known {
		fmt.Fprintf(os.Stderr, "demo: unknown role %q\n%s\n", role, usage)
		os.Exit(2)
	}
	flags := flag.NewFlagSet(role, flag.ExitOnError)
	host := flags.String("host", "0.0.0.0", "address to listen on")
	port := flags.Int("port", envInt("PORT", defaultPort), "port to listen on (env PORT)")
	drain := flags.Duration("drain", envDuration("SHUTDOWN_DELAY", 0),
		"keep serving this long after SIGTERM before closing the listener, "+
			"while endpoints drop the pod (env SHUTDOWN_DELAY)")
	_ = flags.Parse(args) // ExitOnError: it exits on a bad flag

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	addr := net.JoinHostPort(*host, strconv.Itoa(*port))

	var err error
	switch role {
	case "web":
		err = runWeb(ctx, addr, *drain)
	case "api":
		err = runAPI(ctx, addr, *drain)
	case "worker":
		err = runWorker(ctx, addr, *drain)
	}
	if err != nil {
		log.Printf("demo %s: %v", role, err)
		os.Exit(1)
	}
}

// serve answers on addr until ctx ends (SIGTERM), then stops accepting and lets the
// requests in flight finish, so a rolling update loses none.
func serve(ctx context.Context, role, addr string, handler http.Handler, drain time.Duration) error {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	log.Printf("demo %s %s listening on %s", role, commit, listener.Addr())
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	if drain > 0 {
		log.Printf("demo %s: stopping in %s", role, drain)
		time.Sleep(drain)
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	if err := server.Shutdown(shutdown); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Printf("demo %s: stopped", role)
	return nil
}

// health answers 200 on both spellings the blueprint uses (/health, /healthz).
func health(mux *http.ServeMux) {
	ok := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	}
	mux.HandleFunc("GET /health", ok)
	mux.HandleFunc("GET /healthz", ok)
}

// secretsOf lists the passwords inside connection strings (URLs, or libpq's
// "key=value" form), to be blanked out of any text that leaves the process.
func secretsOf(connections ...string) []string {
	var found []string
	add := func(password string) {
		if password != "" {
			found = append(found, password, url.QueryEscape(password), url.PathEscape(password))
		}
	}
	for _, raw := range connections {
		if parsed, err := url.Parse(raw); err == nil && parsed.User != nil {
			password, _ := parsed.User.Password()
			add(password)
			continue
		}
		// Not a URL that parses (a password with a bare '/' or '#'): take what lies
		// between the user's ':' and the last '@' of the authority by hand.
		if _, rest, isURL := strings.Cut(raw, "://"); isURL {
			if at := strings.LastIndex(rest, "@"); at > 0 {
				_, password, _ := strings.Cut(rest[:at], ":")
				add(password)
			}
			continue
		}
		for _, field := range strings.Fields(raw) {
			if value, isPassword := strings.CutPrefix(field, "password="); isPassword {
				add(strings.Trim(value, "'"))
			}
		}
	}
	return found
}

// redact is text with every one of the secrets blanked out.
func redact(text string, secrets []string) string {
	for _, secret := range secrets {
		if secret != "" {
			text = strings.ReplaceAll(text, secret, "xxxxx")
		}
	}
	return text
}

func envInt(key string, fallback int) int {
	if value, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return value
	}
	return fallback
}

func envDuration(key string, fallback time.Duration) time.Duration {
	if value, err := time.ParseDuration(os.Getenv(key)); err == nil {
		return value
	}
	return fallback
}

// probe opens one TCP connection to args[0] within two seconds and says what happened.
func probe(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	conn, err := net.DialTimeout("tcp", args[0], 2*time.Second)
	if err != nil {
		fmt.Println("refused:", err)
		return 1
	}
	_ = conn.Close()
	fmt.Println("connected")
	return 0
}
