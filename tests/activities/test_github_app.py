"""GitHub App authentication against the local GitHub stand-in, which checks the app's
JWT against its public key and takes only the installation tokens it issued."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.git_host import GIT_HOST_REJECTED, FeedbackActivities
from activities.github_app import (
    GITHUB_APP_REJECTED,
    JWT_LIFETIME,
    TOKEN_REFRESH_MARGIN,
    GitHubApp,
    GitHubAppMisconfigured,
)
from domain.feedback import Feedback
from engine.settings import Settings
from tests.plugins.git_host import GitHost, app_key_pair

APP_ID = "4242"
INSTALLATION = 77
SHA = "0123456789abcdef0123456789abcdef01234567"
URLS = {"web": "https://web.shop-pr-7.preview.example.com"}
KEY_PEM, PUBLIC_KEY = app_key_pair()  # made once: RSA key generation takes a while


class Clock:
    """Time shared by the app and the stand-in, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(git_host: GitHost) -> Clock:
    clock = Clock()
    git_host.clock = clock
    git_host.install_app(APP_ID, PUBLIC_KEY, {INSTALLATION: ["acme/shop", "acme/web"]})
    return clock


def feedback(**overrides: Any) -> Feedback:
    values: dict[str, Any] = {"repository": "acme/shop", "pr_number": 7, "head_sha": SHA,
                              "state": "creating", "environment_id": "shop-pr-7-abc123"}
    return Feedback(**(values | overrides))


def app_activities(git_host: GitHost, app: GitHubApp, **settings: Any) -> FeedbackActivities:
    # A personal token is configured too: the app takes precedence over it.
    return FeedbackActivities(
        Settings(github_api_url=git_host.url, github_token=git_host.token, **settings), app=app
    )


def make_app(clock: Clock, *, key: str = KEY_PEM, installation: int | None = None) -> GitHubApp:
    return GitHubApp(APP_ID, key, clock=clock, installation_id=installation)


async def publish(acts: FeedbackActivities, fb: Feedback) -> None:
    await ActivityEnvironment().run(acts.publish_feedback, fb)


async def publish_error(acts: FeedbackActivities, fb: Feedback) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await publish(acts, fb)
    return caught.value


def bearer(call: Any) -> str:
    return str(call.headers["authorization"]).removeprefix("Bearer ")


def token_requests(git_host: GitHost) -> list[Any]:
    return git_host.calls_to("POST", f"/app/installations/{INSTALLATION}/access_tokens")


def lookups(git_host: GitHost) -> list[Any]:
    return git_host.calls_to("GET", "/installation")


async def test_app_token_is_reused_until_near_expiry_then_refreshed(
    git_host: GitHost, clock: Clock
) -> None:
    acts = app_activities(git_host, make_app(clock))
    await publish(acts, feedback())
    await publish(acts, feedback(state="ready", urls=URLS))
    await publish(acts, feedback(state="ready", urls=URLS, pr_number=8))

    # One lookup and one token, both made with a JWT the stand-in checked.
    assert [c.path for c in lookups(git_host)] == ["/repos/acme/shop/installation"]
    [request] = token_requests(git_host)
    claims = jwt.decode(bearer(request), PUBLIC_KEY, algorithms=["RS256"],
                        options={"verify_exp": False})
    assert claims["iss"] == APP_ID
    assert claims["iat"] == int(clock.now) - 60
    assert claims["exp"] - claims["iat"] == JWT_LIFETIME <= 600
    first = next(c for c in git_host.calls if "/issues/" in c.path)
    token = bearer(first)
    assert token.startswith("ghs_")
    repo_calls = [c for c in git_host.calls if "/installation" not in c.path
                  and not c.path.startswith("/app/")]
    assert {bearer(c) for c in repo_calls} == {token}

    # Still more than the margin before expiry: reused.
    clock.advance(3600 - TOKEN_REFRESH_MARGIN - 60)
    await publish(acts, feedback(state="updating"))
    assert len(token_requests(git_host)) == 1

    # Within the margin: replaced before GitHub would refuse it.
    clock.advance(120)
    await publish(acts, feedback(state="ready", urls=URLS))
    assert len(token_requests(git_host)) == 2
    assert len(lookups(git_host)) == 1  # the installation is still known
    renewed = bearer(git_host.calls[-1])
    assert renewed != token and renewed.startswith("ghs_")

    # Past its expiry the first token is refused by the host; the renewed one is not.
    clock.advance(TOKEN_REFRESH_MARGIN)
    async with httpx.AsyncClient(base_url=git_host.url) as http:
        path = "/repos/acme/shop/issues/7/comments"
        old = await http.get(path, headers={"Authorization": f"Bearer {token}"})
        new = await http.get(path, headers={"Authorization": f"Bearer {renewed}"})
    assert old.status_code == 401 and new.status_code == 200


async def test_concurrent_callers_share_one_lookup_and_one_token(
    git_host: GitHost, clock: Clock
) -> None:
    acts = app_activities(git_host, make_app(clock))
    await asyncio.gather(*(publish(acts, feedback(pr_number=n)) for n in range(1, 9)))
    assert len(lookups(git_host)) == 1
    assert len(token_requests(git_host)) == 1
    assert all(len(git_host.comments("acme/shop", n)) == 1 for n in range(1, 9))


async def test_a_configured_installation_is_not_looked_up(
    git_host: GitHost, clock: Clock
) -> None:
    acts = app_activities(git_host, make_app(clock, installation=INSTALLATION))
    await publish(acts, feedback())
    await publish(acts, feedback(repository="acme/web"))
    assert lookups(git_host) == []
    assert len(token_requests(git_host)) == 1


@pytest.mark.parametrize("fault", ["other key", "expired", "too long", "other app"])
async def test_a_bad_jwt_is_refused_and_the_error_names_the_app(
    git_host: GitHost, clock: Clock, fault: str
) -> None:
    if fault == "other key":
        app = make_app(clock, key=app_key_pair()[0])
    elif fault == "expired":  # the worker's clock 11 minutes behind GitHub's
        app = make_app(Clock())
        clock.advance(11 * 60)
    elif fault == "too long":
        now = int(clock.now)
        forged = jwt.encode({"iat": now - 60, "exp": now + 3600, "iss": APP_ID}, KEY_PEM,
                            algorithm="RS256")
        async with httpx.AsyncClient(base_url=git_host.url) as http:
            answer = await http.get("/repos/acme/shop/installation",
                                    headers={"Authorization": f"Bearer {forged}"})
        assert answer.status_code == 401 and "too far" in answer.json()["message"]
        return
    else:
        app = GitHubApp("999", KEY_PEM, clock=clock)
    error = await publish_error(app_activities(git_host, app), feedback())
    assert error.non_retryable and error.type == GITHUB_APP_REJECTED
    assert f"GitHub App {app.app_id}" in str(error)
    sent = bearer(git_host.calls[0])
    assert sent not in str(error) and sent.split(".")[2] not in str(error)
    assert git_host.comments("acme/shop", 7) == []  # nothing done as the app


async def test_an_app_not_installed_on_the_repository_says_so(
    git_host: GitHost, clock: Clock
) -> None:
    error = await publish_error(app_activities(git_host, make_app(clock)),
                                feedback(repository="acme/elsewhere"))
    assert error.non_retryable and error.type == GITHUB_APP_REJECTED
    assert "GitHub App 4242 is not installed on acme/elsewhere" in str(error)
    assert token_requests(git_host) == []


async def test_a_reinstalled_app_gets_a_new_installation_and_token(
    git_host: GitHost, clock: Clock
) -> None:
    acts = app_activities(git_host, make_app(clock))
    await publish(acts, feedback())
    # Uninstalled and installed again, with no webhook reaching this process: the
    # cached token is refused, and a new lookup finds the new installation.
    git_host.uninstall(INSTALLATION)
    git_host.token_lifetime = 600
    git_host.install_app(APP_ID, PUBLIC_KEY, {78: ["acme/shop"]})
    await publish(acts, feedback(state="ready", urls=URLS))
    assert len(lookups(git_host)) == 2
    assert len(git_host.calls_to("POST", "/app/installations/78/access_tokens")) == 1
    assert git_host.statuses("acme/shop", SHA)[-1]["state"] == "success"

    # Once more, found this time when the token runs out and its renewal finds no
    # installation 78.
    git_host.install_app(APP_ID, PUBLIC_KEY, {79: ["acme/shop"]})
    clock.advance(600)
    await publish(acts, feedback(state="ready", urls=URLS, pr_number=9))
    assert len(git_host.calls_to("POST", "/app/installations/78/access_tokens")) == 2
    assert len(git_host.calls_to("POST", "/app/installations/79/access_tokens")) == 1
    assert len(lookups(git_host)) == 3
    assert len(git_host.comments("acme/shop", 9)) == 1


async def test_an_installation_refused_twice_is_reported(git_host: GitHost, clock: Clock) -> None:
    acts = app_activities(git_host, make_app(clock))
    await publish(acts, feedback())
    git_host.fail_next(2, 401, path_contains="/issues/", message="Bad credentials")
    error = await publish_error(acts, feedback(state="ready", urls=URLS))
    assert error.non_retryable and error.type == GIT_HOST_REJECTED
    assert "GitHub App 4242 is installed" in str(error)
    assert len(token_requests(git_host)) == 2  # renewed once, then given up


async def test_forget_drops_the_installation_and_its_token(
    git_host: GitHost, clock: Clock
) -> None:
    app = make_app(clock)
    acts = app_activities(git_host, app)
    await publish(acts, feedback())
    app.forget(repositories=["ACME/Shop"])  # GitHub names are case-insensitive
    await publish(acts, feedback(repository="acme/web"))
    await publish(acts, feedback())
    assert [c.path for c in lookups(git_host)] == [
        "/repos/acme/shop/installation", "/repos/acme/web/installation",
        "/repos/acme/shop/installation"]
    assert len(token_requests(git_host)) == 2  # dropped with the installation once


async def test_neither_jwt_nor_token_reaches_logs_or_errors(
    git_host: GitHost, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    acts = app_activities(git_host, make_app(clock))
    await publish(acts, feedback())
    token = bearer(git_host.calls[-1])
    git_host.fail_next(1, 400, path_contains="/statuses/", message=f"echo {token}")
    error = await publish_error(acts, feedback(state="failed"))
    assert token not in str(error) and "***" in str(error)
    secrets = {bearer(c) for c in git_host.calls if "authorization" in c.headers}
    assert len(secrets) >= 2  # a JWT at least and the token
    assert "HTTP Request" in caplog.text
    for secret in secrets:
        assert secret not in caplog.text
        assert secret.split(".")[-1] not in caplog.text


# --- settings -------------------------------------------------------------------------


def test_the_app_comes_from_a_key_file_or_the_key_itself(tmp_path: Path) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text(KEY_PEM)
    from_file = GitHubApp.from_settings(
        Settings(github_app_id=APP_ID, github_app_private_key_file=key_file,
                 github_app_installation_id=INSTALLATION))
    assert from_file is not None and from_file.app_id == APP_ID
    claims = jwt.decode(from_file.jwt(), PUBLIC_KEY, algorithms=["RS256"])
    assert claims["iss"] == APP_ID
    # A key pasted into one line of an environment file, with literal "\n".
    inline = Settings(github_app_id="Iv1.abc", github_app_private_key=KEY_PEM.replace("\n", "\\n"))
    app = GitHubApp.from_settings(inline)
    assert app is not None
    assert jwt.decode(app.jwt(), PUBLIC_KEY, algorithms=["RS256"])["iss"] == "Iv1.abc"
    assert GitHubApp.from_settings(Settings()) is None  # personal tokens, as before


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"github_app_id": APP_ID}, "PREVIEW_GITHUB_APP_PRIVATE_KEY_FILE"),
        ({"github_app_private_key": KEY_PEM}, "PREVIEW_GITHUB_APP_ID"),
        ({"github_app_id": APP_ID, "github_app_private_key": KEY_PEM,
          "github_app_private_key_file": "/x.pem"}, "set one of"),
        ({"github_app_id": APP_ID, "github_app_private_key": "-----BEGIN PRIVATE KEY-----\n"
          "bm90IGEga2V5\n-----END PRIVATE KEY-----"}, "not a PEM private key"),
        ({"github_app_id": APP_ID, "github_app_private_key_file": "/nonexistent/app.pem"},
         "cannot read /nonexistent/app.pem"),
    ],
)
def test_incomplete_app_settings_are_refused_by_name(settings: dict[str, Any],
                                                     names: str) -> None:
    with pytest.raises(GitHubAppMisconfigured) as caught:
        FeedbackActivities(Settings(**settings))
    assert names in str(caught.value)
    assert "bm90IGEga2V5" not in str(caught.value)
