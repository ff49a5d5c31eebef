"""Every setting of the engine, read from environment variables.

The defaults point at the embedded local stack; pointing the variables at a real
Temporal cluster, Kubernetes cluster, AWS account and GitHub needs no code change.
"""

from __future__ import annotations

import json
from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREVIEW_", extra="ignore")

    # Temporal
    temporal_address: str = Field("127.0.0.1:7233", description="Temporal frontend host:port")
    temporal_namespace: str = Field("default", description="Temporal namespace")
    task_queue: str = Field("previews", description="Task queue of the lifecycle worker")
    temporal_tls: bool = Field(False, description="Use TLS to reach Temporal (Temporal Cloud)")
    temporal_api_key: SecretStr | None = Field(None, description="Temporal Cloud API key")

    # Payload codec: comma-separated `key_id:base64(32 bytes)`; the last one encrypts,
    # all of them decrypt, so a new key can be added without losing old histories.
    codec_keys: SecretStr = Field(
        SecretStr("local-1:bG9jYWwtZGV2ZWxvcG1lbnQta2V5LW5vdC1zZWNyZXQ="),
        description="Payload codec keys `id:base64key,...`; the last encrypts",
    )
    codec_token: SecretStr = Field(
        SecretStr("local-codec-token"), description="Bearer token the Web UI sends to /codec"
    )
    codec_cors_origin: str = Field(
        "http://127.0.0.1:8233", description="The Web UI origin allowed to call /codec"
    )

    # Sealing of stored secrets (envelope encryption): same format as codec_keys.
    master_keys: SecretStr = Field(
        SecretStr("master-1:bG9jYWwtbWFzdGVyLWtleS1mb3ItZGV2ZWxvcG1lbnQ="),
        description="Master keys wrapping secret data keys `id:base64key,...`; the last wraps",
    )
    kms_key_id: str | None = Field(
        None, description="AWS KMS key (id, ARN or alias) that wraps secret data keys instead; "
        "the master keys then only unwrap older values",
    )

    # Control-plane store
    database_url: str = Field(
        "postgresql://preview@127.0.0.1:5432/preview_control",
        description="Control-plane PostgreSQL (projects, variables, sealed secrets, deliveries)",
    )
    # Server that holds golden copies and per-preview database clones.
    preview_database_url: str = Field(
        "postgresql://preview@127.0.0.1:5432/postgres",
        description="Admin URL of the PostgreSQL server that hosts preview clones",
    )

    # AWS (boto3's credential chain in production; moto on loopback locally)
    aws_endpoint_url: str | None = Field(None, description="AWS endpoint override (moto)")
    aws_region: str = Field("eu-west-1", description="Default AWS region")

    # Kubernetes
    kubeconfig: str | None = Field(None, description="Kubeconfig path; in-cluster if unset")
    kube_contexts: dict[str, str] = Field(
        default_factory=dict,
        description="Cluster name → kubeconfig path, for environments on dedicated clusters",
    )
    ingress_controller_namespace: str = Field(
        "ingress-nginx", description="Namespace whose pods may reach previews"
    )
    storage_class: str = Field("standard", description="Storage class for container databases")
    golden_dump_bucket: str | None = Field(
        None, description="S3 bucket where golden copies are published for container databases"
    )

    # Webhooks and Git hosting
    github_webhook_secret: SecretStr = Field(
        SecretStr("local-webhook-secret"), description="GitHub webhook HMAC secret"
    )
    gitlab_webhook_token: SecretStr = Field(
        SecretStr("local-gitlab-token"), description="GitLab X-Gitlab-Token"
    )
    github_api_url: str = Field("https://api.github.com", description="GitHub API base URL")
    github_token: SecretStr | None = Field(None, description="Token for PR comments/statuses")
    gitlab_api_url: str = Field(
        "https://gitlab.com/api/v4", description="GitLab API root (with /api/v4)"
    )
    gitlab_token: SecretStr | None = Field(None, description="Token for MR notes/statuses")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the API admin (creates projects and tokens)"
    )
    masking_key: SecretStr = Field(
        SecretStr("local-masking-key"), description="HMAC key of keyed-hash masking"
    )
    blueprint_source: str = Field("store", description="`store` or `files` (blueprint_dir)")
    webhook_max_bytes: int = Field(5 * 1024 * 1024, description="Largest accepted webhook body")

    # Previews
    base_domain: str = Field("preview.localhost", description="Domain under which previews live")
    blueprint_dir: str = Field(
        "examples", description="Folder of blueprint files used when the store has none"
    )

    # Starter service
    listen_host: str = Field("127.0.0.1", description="Starter bind address")
    listen_port: int = Field(8080, description="Starter port")


    def as_environment(self) -> dict[str, str]:
        """The PREVIEW_* variables that make `Settings()` in a child process equal this."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, dict):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"PREVIEW_{name.upper()}"] = str(value)
        return env


@lru_cache
def get_settings() -> Settings:
    return Settings()


def markdown_table() -> str:
    """The README's configuration table, generated from this model."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            shown = "*(local development value)*"
        elif default in (None, {}, ""):
            shown = "—"
        else:
            shown = f"`{default}`"
        rows.append(f"| `PREVIEW_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
