"""Tokens at the door (starter.api.auth): who may call what, and who may place an environment
on a dedicated cluster or cloud account."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.starter.api_support import ADMIN, assert_error, auth, import_example, project_token


async def test_authentication_and_authorisation(client: httpx.AsyncClient, project: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YTpi"},
                    {"Authorization": "Bearer "}):
        response = await client.get("/projects", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"

    other = f"o-{uuid.uuid4().hex[:8]}"
    assert (await import_example(client, other, f"acme/{other}")).status_code == 201
    token = await project_token(client, project)
    # A project token sees and changes its own project only.
    listed = (await client.get("/projects", headers=auth(token))).json()
    assert [p["name"] for p in listed["items"]] == [project] and listed["total"] == 1
    assert (await client.get(f"/projects/{project}/applications",
                             headers=auth(token))).status_code == 200
    for method, path in [("GET", f"/projects/{other}"), ("GET", f"/projects/{other}/secrets"),
                         ("DELETE", f"/projects/{other}/applications/web"),
                         ("GET", "/projects/does-not-exist")]:
        response = await client.request(method, path, headers=auth(token))
        assert_error(response, 403, "forbidden", f"this token is for project '{project}'")
    # Admin-only operations.
    for method, path, body in [("POST", "/projects", {"name": "x", "repository": "a/x"}),
                               ("DELETE", f"/projects/{project}", None),
                               ("GET", "/tokens", None), ("GET", "/audit", None),
                               ("POST", "/tokens", {"name": "y", "project": project})]:
        response = await client.request(method, path, json=body, headers=auth(token))
        assert_error(response, 403, "forbidden", "admin token")
    await client.delete(f"/projects/{other}", headers=auth())


async def test_only_an_admin_places_an_environment_on_a_dedicated_cluster_or_account(
    client: httpx.AsyncClient, project: str,
) -> None:
    token = await project_token(client, project)
    exported = (await client.get(f"/projects/{project}/blueprint", headers=auth())).json()

    async def import_as(who: str, environment: dict[str, Any]) -> httpx.Response:
        body = {**exported, "environment": {**exported["environment"], **environment}}
        return await client.post("/blueprints", json=body, headers=auth(who))

    hipaa = {"isolation": "cluster", "cluster": {"name": "hipaa"}}
    # Someone else's cluster, or someone else's account: not for a project token.
    assert_error(await import_as(token, hipaa), 403, "forbidden", "only an admin token")
    account = {"isolation": "account", "cloud_account": {
        "account_id": "222222222222", "role_arn": "arn:aws:iam::222222222222:role/p",
        "external_id": "guessed"}}
    assert_error(await import_as(token, account), 403, "forbidden", "dedicated")
    # The admin places it; the project's own token may then keep that placement...
    assert (await import_as(ADMIN, hipaa)).status_code == 200
    assert (await import_as(token, hipaa)).status_code == 200
    # ...but not move it elsewhere, by import or by editing the environment.
    assert_error(await import_as(token, {"cluster": {"name": "other"}, "isolation": "cluster"}),
                 403, "forbidden")
    env = (await client.get(f"/projects/{project}/environments/production",
                            headers=auth())).json()
    moved = {**env, "cluster": {"name": "bank"}}
    assert_error(await client.put(f"/projects/{project}/environments/production", json=moved,
                                  headers=auth(token)), 403, "forbidden")
    stored = await client.get(f"/projects/{project}/environments/production", headers=auth())
    assert stored.json()["cluster"]["name"] == "hipaa"
    # Nor by creating another environment there, or by isolation alone.
    other = {**env, "name": "staging", "kind": "staging"}
    assert_error(await client.post(f"/projects/{project}/environments", json=other,
                                   headers=auth(token)), 403, "forbidden")
    account_only = {**env, "isolation": "account", "cluster": {"name": "default"},
                    "cloud_account": account["cloud_account"]}
    assert_error(await client.put(f"/projects/{project}/environments/production",
                                  json=account_only, headers=auth(token)), 403, "forbidden")
    assert (await client.post(f"/projects/{project}/environments", json=other,
                              headers=auth())).status_code == 201  # an admin may
    # Back to the shared cluster is always allowed.
    shared = {**env, "isolation": "namespace", "cluster": {"name": "default"}}
    assert (await client.put(f"/projects/{project}/environments/production", json=shared,
                             headers=auth(token))).status_code == 200
