"""The Redis cache of a preview on the real control plane: a hardened Deployment and
Service in a restricted namespace, a password kept in a Secret of ours, a sealed URL."""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

import pytest

from activities.errors import FOREIGN_RESOURCE
from activities.kubernetes.cache import CacheActivities
from domain.resources import CacheSpec
from tests.activities.kubernetes.workload_env import CLUSTER, Env

pytestmark = pytest.mark.kube


def cache_spec(env: Env, namespace: str) -> CacheSpec:
    return CacheSpec(owner=env.owner, cluster=CLUSTER, namespace=namespace,
                     name="cache-sessions", image="redis:7.4-alpine", memory="128Mi")


def test_a_cache_rolls_out_keeps_its_password_and_goes_without_a_trace(env: Env) -> None:
    namespace = env.namespace().name
    caches = CacheActivities(env.acts)
    spec = cache_spec(env, namespace)

    output = env.step(caches.ensure_cache, spec)
    url = urlsplit(env.sealer.unseal(output.secrets["url"]))
    assert (url.scheme, url.hostname, url.port) == (
        "redis", f"cache-sessions.{namespace}.svc", 6379)
    password = unquote(url.password or "")
    assert len(password) >= 24 and output.values["host"] == url.hostname
    assert "redis:7.4-alpine" in output.detail and password not in output.detail

    # From outside: the Deployment is ready and hardened, the password only in the Secret.
    deployment = env.must_get("deployment", "cache-sessions", namespace)
    assert deployment["status"]["readyReplicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 999
    assert container["command"][:3] == ["redis-server", "--requirepass", "$(REDIS_PASSWORD)"]
    assert "--maxmemory" in container["command"] and "115mb" in container["command"]
    assert password not in str(deployment)
    secret = env.must_get("secret", "cache-sessions-auth", namespace)
    assert base64.b64decode(secret["data"]["REDIS_PASSWORD"]).decode() == password
    assert env.must_get("service", "cache-sessions", namespace)["spec"]["ports"][0]["port"] == 6379

    # Again (a retry, or a redeploy): the same URL, nothing new.
    again = env.step(caches.ensure_cache, spec)
    assert env.sealer.unseal(again.secrets["url"]) == env.sealer.unseal(output.secrets["url"])

    env.step(caches.remove_cache, spec)
    for kind, name in (("deployment", "cache-sessions"), ("service", "cache-sessions"),
                       ("secret", "cache-sessions-auth")):
        assert env.get(kind, name, namespace) is None, kind
    env.step(caches.remove_cache, spec)  # absent already: still success


def test_a_secret_of_someone_else_is_not_adopted(env: Env) -> None:
    namespace = env.namespace().name
    env.create({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "cache-sessions-auth", "namespace": namespace},
                "stringData": {"REDIS_PASSWORD": "theirs"}})
    error = env.failure(CacheActivities(env.acts).ensure_cache, cache_spec(env, namespace))
    assert error.type == FOREIGN_RESOURCE and error.non_retryable
    assert "theirs" not in str(error)
    assert env.get("deployment", "cache-sessions", namespace) is None
