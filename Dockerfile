# helm renders blueprints' charts in the worker (PREVIEW_HELM_BINARY): built from the Go
# module proxy at the version the tests use (stack/helm.py).
FROM golang:1.26-bookworm AS helm
RUN CGO_ENABLED=0 GOBIN=/out go install helm.sh/helm/v3/cmd/helm@v3.22.0

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=helm /out/helm /usr/local/bin/helm
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY engine engine
COPY domain domain
COPY workflows workflows
COPY activities activities
COPY store store
COPY starter starter
COPY worker.py ./
RUN pip install --no-cache-dir -c constraints.txt .
