"""The variable routes (starter.api.variables)."""

from __future__ import annotations

import httpx

from tests.starter.api_support import assert_error, auth


async def test_variable_routes(client: httpx.AsyncClient, project: str) -> None:
    base = f"/projects/{project}/variables"
    body = {"key": "FEATURE_X", "value": "on", "scope": "application", "application": "api"}
    assert (await client.post(base, json=body, headers=auth())).status_code == 201
    assert_error(await client.post(base, json=body, headers=auth()), 409, "conflict",
                 "FEATURE_X (scope=application, application=api, applies_to=both)")
    put = await client.put(f"{base}/FEATURE_X", headers=auth(), json={
        "value": "off", "scope": "application", "application": "api"})
    assert put.status_code == 200 and put.json()["value"] == "off"
    put = await client.put(f"{base}/FEATURE_X", headers=auth(), json={
        "value": "beta", "applies_to": "previews"})
    assert put.status_code == 201
    listed = (await client.get(base, params={"key": "FEATURE_X"}, headers=auth())).json()
    assert sorted(v["value"] for v in listed["items"]) == ["beta", "off"]
    one = await client.get(f"{base}/FEATURE_X", headers=auth(),
                           params={"scope": "application", "application": "api"})
    assert one.status_code == 200 and one.json()["value"] == "off"
    assert_error(await client.get(f"{base}/FEATURE_X", headers=auth()), 404, "not_found",
                 "FEATURE_X (scope=project, applies_to=both)")
    assert_error(await client.get(f"{base}/FEATURE_X", params={"scope": "application"},
                                  headers=auth()), 422, "invalid", "needs `application`")
    assert_error(await client.put(f"{base}/bad-key", json={"value": "x"}, headers=auth()),
                 422, "invalid", "path.key")
    assert_error(await client.put(f"{base}/X", json={"value": "x", "scope": "application",
                                                     "application": "ghost"}, headers=auth()),
                 422, "invalid", "unknown application or job 'ghost'")
    assert_error(await client.put(f"{base}/LOOP", headers=auth(), json={
        "value": "LOOP", "kind": "alias"}), 422, "invalid", "cycle: LOOP -> LOOP")
    deleted = await client.delete(f"{base}/FEATURE_X", headers=auth(),
                                  params={"applies_to": "previews"})
    assert deleted.status_code == 204
    assert_error(await client.delete(f"{base}/FEATURE_X", headers=auth(),
                                     params={"applies_to": "previews"}), 404, "not_found")
