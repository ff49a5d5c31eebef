FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
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
