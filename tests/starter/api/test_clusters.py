"""Dedicated clusters' kubeconfigs (starter.api.clusters)."""

from __future__ import annotations

import uuid

import httpx

from tests.starter.api_support import assert_error, auth, project_token


async def test_cluster_kubeconfigs_are_write_only_and_admin_only(
    client: httpx.AsyncClient, project: str,
) -> None:
    from tests.store.test_store import KEY_DATA, KUBECONFIG

    name = f"c-{uuid.uuid4().hex[:6]}"
    token = await project_token(client, project)
    assert_error(await client.put(f"/clusters/{name}", json={"kubeconfig": KUBECONFIG},
                                  headers=auth(token)), 403, "forbidden", "admin")
    created = await client.put(f"/clusters/{name}", json={"kubeconfig": KUBECONFIG},
                               headers=auth())
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name and KEY_DATA not in created.text
    replaced = await client.put(f"/clusters/{name}",
                                json={"kubeconfig": KUBECONFIG, "context": "hipaa-ops"},
                                headers=auth())
    assert replaced.status_code == 204
    listed = await client.get("/clusters", headers=auth())
    assert listed.status_code == 200 and KEY_DATA not in listed.text
    (mine,) = [c for c in listed.json()["items"] if c["name"] == name]
    assert mine["version"] == 2 and mine["context"] == "hipaa-ops"

    bad = await client.put(f"/clusters/{name}", json={"kubeconfig": KUBECONFIG,
                                                      "context": "elsewhere"}, headers=auth())
    assert_error(bad, 422, "invalid", "context 'elsewhere' is not in the kubeconfig")
    assert KEY_DATA not in bad.text
    assert_error(await client.put("/clusters/Bad_Name", json={"kubeconfig": KUBECONFIG},
                                  headers=auth()), 422, "invalid")
    assert (await client.delete(f"/clusters/{name}", headers=auth())).status_code == 204
    assert_error(await client.delete(f"/clusters/{name}", headers=auth()), 404, "not_found")
