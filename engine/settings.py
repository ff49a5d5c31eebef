"""Every setting of the engine, read from environment variables.

The defaults point at the embedded local stack; pointing the variables at a real
Temporal cluster, Kubernetes cluster, AWS account and GitHub needs no code change.
"""

from __future__ import annotations

import base64
import json
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.blueprint import EgressRule

# Values written in this file: good for the local stack and tests, public to everyone.
DEVELOPMENT_SECRETS: dict[str, str] = {
    "codec_keys": "local-1:bG9jYWwtZGV2ZWxvcG1lbnQta2V5LW5vdC1zZWNyZXQ=",
    "codec_token": "local-codec-token",
    "master_keys": "master-1:bG9jYWwtbWFzdGVyLWtleS1mb3ItZGV2ZWxvcG1lbnQ=",
    "github_webhook_secret": "local-webhook-secret",
    "gitlab_webhook_token": "local-gitlab-token",
    "masking_key": "local-masking-key",
}


class InsecureSettings(SystemExit):
    """A service outside the local profile was given a secret everyone knows."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREVIEW_", extra="ignore")

    profile: Literal["production", "local"] = Field(
        "production", description="`local` (the local stack and tests only) accepts the "
        "development secrets written in the source; anything else refuses them")

    # Temporal
    temporal_address: str = Field("127.0.0.1:7233", description="Temporal frontend host:port")
    temporal_namespace: str = Field("default", description="Temporal namespace")
    task_queue: str = Field("previews", description="Task queue of the lifecycle worker")
    sticky_timeout_seconds: float = Field(
        3.0, gt=0, description="How long a workflow task waits on the worker that ran the "
        "workflow last before any worker may take it (a killed worker holds its previews "
        "this long; the SDK's default is 10)")
    temporal_tls: bool = Field(False, description="Use TLS to reach Temporal (Temporal Cloud)")
    temporal_api_key: SecretStr | None = Field(None, description="Temporal Cloud API key")

    # Payload codec: comma-separated `key_id:base64(32 bytes)`; the last one encrypts,
    # all of them decrypt, so a new key can be added without losing old histories.
    codec_keys: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRETS["codec_keys"]),
        description="Payload codec keys `id:base64key,...`; the last encrypts",
    )
    codec_token: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRETS["codec_token"]),
        description="Bearer token of /codec callers other than the Web UI (see README)")
    codec_cors_origin: str = Field(
        "http://127.0.0.1:8233", description="The Web UI origin allowed to call /codec"
    )
    codec_auth: Literal["none", "token", "oidc"] = Field(
        "token", description="Who may call /codec: `token` (Authorization: Bearer the codec "
        "token; CLIs, or a proxy that adds it), `oidc` (the access token the Web UI passes "
        "with TEMPORAL_CODEC_PASS_ACCESS_TOKEN), `none` (local profile on loopback only)")
    codec_oidc_issuer: str | None = Field(
        None, description="With codec_auth=oidc: issuer URL the access tokens must name (`iss`)")
    codec_oidc_audience: str | None = Field(
        None, description="With codec_auth=oidc: audience the access tokens must carry (`aud`)")
    codec_oidc_jwks_url: str | None = Field(
        None, description="With codec_auth=oidc: the issuer's JWKS URL, if not the one its "
        "/.well-known/openid-configuration names")

    # Sealing of stored secrets (envelope encryption): same format as codec_keys.
    master_keys: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRETS["master_keys"]),
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
    preview_database_app_address: str | None = Field(
        None, pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$",
        description="host:port at which previews' applications reach that server, when not "
                    "the admin URL's (a proxy, a private endpoint, a node's gateway)")

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
    ingress_controller_cidrs: list[str] = Field(
        default_factory=list,
        description="Addresses of ingress controllers that are not pods of that namespace "
                    "(a controller on the node's host network): they may reach previews too")
    cluster_dns_cidrs: list[str] = Field(
        default_factory=list,
        description="Cluster DNS servers that are not kube-dns pods in kube-system (a "
                    "node-local resolver): previews may query them")
    preview_egress: list[EgressRule] = Field(
        default_factory=list,
        description='Where every preview may connect outside the cluster, JSON [{"cidr": '
                    '"10.1.2.3/32", "ports": [5432]}]: the preview database server as pods '
                    "reach it; the blueprint's network.egress adds to it")
    storage_class: str = Field("standard", description="Storage class for container databases")
    kube_preview_role: str | None = Field(
        None, description="ClusterRole the worker binds to itself in each preview namespace "
        "for what it may do nowhere else (Secrets; the chart's `<release>-worker-in-preview`); "
        "unset: its credentials' own rights")
    golden_snapshot_namespace: str = Field(
        "preview-golden", description="Namespace of the golden volume snapshots container "
        "databases are cloned from, and of their credentials Secrets")
    golden_dump_bucket: str | None = Field(
        None, description="S3 bucket where golden copies are published for container databases"
    )

    # Webhooks and Git hosting
    github_webhook_secret: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRETS["github_webhook_secret"]),
        description="GitHub webhook HMAC secret")
    gitlab_webhook_token: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRETS["gitlab_webhook_token"]),
        description="GitLab X-Gitlab-Token")
    github_api_url: str = Field("https://api.github.com", description="GitHub API base URL")
    github_token: SecretStr | None = Field(None, description="Token for PR comments/statuses")
    github_app_id: str | None = Field(
        None, description="GitHub App id (or client id) for PR feedback; when set, the app's "
        "installation tokens are used instead of PREVIEW_GITHUB_TOKEN")
    github_app_private_key: SecretStr | None = Field(
        None, description="The GitHub App's private key (PEM text)")
    github_app_private_key_file: Path | None = Field(
        None, description="File holding the GitHub App's private key (PEM), instead")
    github_app_installation_id: int | None = Field(
        None, description="The app's installation to use for every repository; looked up "
        "per repository when unset")
    gitlab_api_url: str = Field(
        "https://gitlab.com/api/v4", description="GitLab API root (with /api/v4)"
    )
    gitlab_token: SecretStr | None = Field(None, description="Token for MR notes/statuses")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the API admin (creates projects and tokens)"
    )
    masking_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRETS["masking_key"]), description="HMAC key of keyed-hash masking"
    )
    blueprint_source: str = Field("store", description="`store` or `files` (blueprint_dir)")
    webhook_max_bytes: int = Field(5 * 1024 * 1024, description="Largest accepted webhook body")

    # Previews
    base_domain: str = Field(
        "preview.localhost",
        description="Domain under which previews live, unless the blueprint names its own")
    registry_credentials: SecretStr | None = Field(
        None, description='Pull credentials per registry host, JSON {"host": "user:password"}: '
        'for image checks and oci:// Helm charts')
    registry_plain_http: list[str] = Field(
        default_factory=list, description="Registry hosts reached over plain HTTP (a registry "
        "on loopback in tests); all others over HTTPS")
    helm_binary: str = Field(
        "helm", description="The helm binary the worker renders blueprints' charts with "
                            "(helm template)")
    check_images: bool = Field(
        True, description="Wait for each application's image to exist in its registry "
                          "before rolling it out")
    ingress_hostname: str = Field(
        "ingress.preview.localhost",
        description="Host name of the ingress load balancer that preview DNS records point to")
    ingress_wait_for_address: bool = Field(
        False, description="Call a preview's Ingress ready only once the ingress controller "
                           "has published an address for it (status.loadBalancer): by then "
                           "it routes the host, so the URL on the pull request answers")
    resource_check_minutes: float = Field(
        10, ge=0, description="How often a ready preview checks that its namespace and "
                              "database are still there (0: never); one that finds them gone "
                              "says so and the next deploy puts them back")
    sweep_grace_minutes: float = Field(
        10, ge=0, description="The orphan sweeper never removes an environment with a resource "
                              "younger than this (by the resource's own creation time)")
    sweep_max_removals: int = Field(
        25, ge=0, description="A sweep holds back a system where it would remove more "
                              "environments than this, unless forced (`preview sweep --force`)")
    sweep_max_removal_share: float = Field(
        0.5, gt=0, le=1, description="...or more than this share of the environments it found "
                                     "there (past 3 of them)")
    preview_url_check: bool = Field(
        False, description="Call a preview's route ready only once its URL answers from the "
                           "application (its health path through the ingress), not from the "
                           "controller or its default backend: the controller may publish an "
                           "address before it routes. The worker must reach the ingress")
    preview_url_connect_to: str | None = Field(
        None, pattern=r"^[^:/\s]+:\d{1,5}$",
        description="host:port the worker connects to for that check instead of resolving the "
                    "URL's host (curl's --connect-to), e.g. the ingress's internal address")
    preview_url_port: int | None = Field(
        None, ge=1, le=65535,
        description="Port in the previews' URLs, when the ingress answers on neither 80 nor 443")
    registry_mirrors: dict[str, str] = Field(
        default_factory=dict,
        description='Registry hosts reached at another address, JSON {"registry.local": '
                    '"127.0.0.1:5000"}: the engine asks that address, as the nodes are told to')
    blueprint_dir: str = Field(
        "examples", description="Folder of blueprint files used when the store has none"
    )

    # Starter service
    listen_host: str = Field("127.0.0.1", description="Starter bind address")
    listen_port: int = Field(8080, description="Starter port")

    # Metrics (the starter's are at /metrics on its own port)
    worker_metrics_address: str | None = Field(
        None, pattern=r"^[^\s/]+:\d{1,5}$",
        description="host:port where the worker serves Prometheus metrics at /metrics: the "
                    "Temporal SDK's and the engine's (durations, step failures, clones); "
                    "unset: none")


    def insecure(self) -> list[str]:
        """Secret settings left at a value written in the source (or unset), by variable."""
        found = [f"PREVIEW_{name.upper()}" for name, value in DEVELOPMENT_SECRETS.items()
                 if getattr(self, name).get_secret_value() == value]
        if self.kms_key_id:  # KMS wraps new secrets; master keys only unwrap old ones
            found = [name for name in found if name != "PREVIEW_MASTER_KEYS"]
        return found

    def require_secure(self, service: str) -> None:
        """Refuse to run a service on public secrets, outside the local profile."""
        insecure = self.insecure()
        if self.profile != "local" and insecure:
            raise InsecureSettings(
                f"{service}: refusing to start: {', '.join(insecure)} "
                f"{'is' if len(insecure) == 1 else 'are'} unset or set to the development "
                "value written in the source. Set each to a secret of your own (keys: "
                "`id:` + 32 random bytes in base64), or set PREVIEW_PROFILE=local for a "
                "local stack.")

    def as_environment(self) -> dict[str, str]:
        """The PREVIEW_* variables that make `Settings()` in a child process equal this."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, dict | list):  # JSON, as pydantic-settings reads them
                value = json.dumps(self.model_dump(mode="json", include={name})[name])
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"PREVIEW_{name.upper()}"] = str(value)
        return env


def generated_secrets(state_dir: Path) -> dict[str, str]:
    """Random secrets for a local stack, made once per state folder and kept there (0600)."""
    path = state_dir / "secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        if set(stored) == set(DEVELOPMENT_SECRETS):
            return stored

    def key(key_id: str) -> str:
        return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"

    made = {
        "codec_keys": key("local-codec-1"),
        "codec_token": secrets.token_urlsafe(32),
        "master_keys": key("local-master-1"),
        "github_webhook_secret": secrets.token_urlsafe(32),
        "gitlab_webhook_token": secrets.token_urlsafe(32),
        "masking_key": secrets.token_urlsafe(32),
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.touch(mode=0o600)
    temporary.chmod(0o600)
    temporary.write_text(json.dumps(made))
    temporary.replace(path)
    return made


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
