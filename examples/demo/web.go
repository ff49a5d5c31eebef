package main

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"
)

// page is the web role's one page: small, no external assets, every value a browser
// test reads carries an id (and the outcome of the api call a data-status).
var page = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Hello World preview</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 40rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
code { background: #f2f4f7; padding: 0 .3rem; border-radius: 4px; }
.failed { color: #b42318; font-weight: 600; } .ok { color: #067647; font-weight: 600; }
</style>
</head>
<body>
<h1>Hello World</h1>
<dl>
<dt>Commit</dt><dd><code id="commit">{{.Commit}}</code></dd>
<dt>NODE_ENV</dt><dd><code id="node-env">{{.NodeEnv}}</code></dd>
<dt>HEAD_SHA</dt><dd><code id="head-sha">{{.HeadSHA}}</code></dd>
<dt>PUBLIC_API</dt><dd><code id="public-api">{{.PublicAPI}}</code></dd>
</dl>
<h2>API <code id="api-url">{{.APIURL}}</code></h2>
<p id="api-status" data-status="{{if .APIError}}failed{{else}}ok{{end}}" class="{{if .APIError}}failed{{else}}ok{{end}}">
{{- if .APIError}}The api failed: <span id="api-error">{{.APIError}}</span>{{else}}The api answered.{{end -}}
</p>
{{- with .API}}
<dl>
<dt>API commit</dt><dd><code id="api-commit">{{.Commit}}</code></dd>
<dt>Customer email</dt><dd>
{{- if .Customer}}<span id="customer-email">{{.Customer.Email}}</span> ({{.Customer.Name}})
{{- else}}<span id="customer-error" class="failed">{{.CustomerError}}</span>{{end -}}
</dd>
<dt>Visits</dt><dd>
{{- if .Visits}}<span id="visits">{{.Visits}}</span>
{{- else}}<span id="visits-error" class="failed">{{.VisitsError}}</span>{{end -}}
</dd>
</dl>
{{- end}}
</body>
</html>
`))

type pageData struct {
	Commit, NodeEnv, HeadSHA, APIURL string
	PublicAPI                        string     // where a browser reaches the api (PUBLIC_API)
	API                              *APIAnswer // nil when APIError says why
	APIError                         string
}

type web struct {
	apiURL string
	client *http.Client
}

// askAPI is the api's answer to GET /, or why there is none.
func (s *web) askAPI(ctx context.Context) (*APIAnswer, string) {
	if s.apiURL == "" {
		return nil, "API_URL is not set"
	}
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, s.apiURL+"/", nil)
	if err != nil {
		return nil, err.Error()
	}
	response, err := s.client.Do(request)
	if err != nil {
		return nil, err.Error()
	}
	defer response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(response.Body, 1<<20))
	if err != nil {
		return nil, err.Error()
	}
	if response.StatusCode != http.StatusOK {
		return nil, fmt.Sprintf("GET %s/ answered %s", s.apiURL, response.Status)
	}
	var answer APIAnswer
	if err := json.Unmarshal(body, &answer); err != nil {
		return nil, fmt.Sprintf("GET %s/ answered something else than JSON: %v", s.apiURL, err)
	}
	return &answer, ""
}

func (s *web) root(w http.ResponseWriter, r *http.Request) {
	data := pageData{Commit: commit, NodeEnv: os.Getenv("NODE_ENV"),
		HeadSHA: os.Getenv("HEAD_SHA"), APIURL: s.apiURL, PublicAPI: os.Getenv("PUBLIC_API")}
	data.API, data.APIError = s.askAPI(r.Context())
	if data.APIError != "" {
		log.Printf("web: the api failed: %s", data.APIError)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	// 200 whatever the api did: the page says what failed.
	if err := page.Execute(w, data); err != nil {
		log.Printf("web: page: %v", err)
	}
}

func runWeb(ctx context.Context, addr string, drain time.Duration) error {
	s := &web{
		apiURL: strings.TrimRight(os.Getenv("API_URL"), "/"),
		client: &http.Client{Timeout: 5 * time.Second},
	}
	mux := http.NewServeMux()
	health(mux)
	mux.HandleFunc("GET /{$}", s.root)
	return serve(ctx, "web", addr, mux, drain)
}
