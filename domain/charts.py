"""Helm charts as elements of a blueprint. The planner's rule is in
domain/plan_elements.py, the activity pair in activities/kubernetes/charts.py."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from domain.base import Named

ValuePath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
                                  max_length=200)]


class Chart(Named):
    """A Helm chart as part of the preview, from a registry or from a folder of the PR's
    repository at its head commit: the engine renders it (helm template) and
    applies what it renders itself, object by object, with its ownership marks, in the
    preview's namespace; a redeploy prunes what the new render no longer has.

    String values may hold `{{ urls.<app> }}`, `{{ hosts.<chart> }}` (this chart's own
    preview host when `public`), `{{ pr.number }}` and `{{ pr.head_sha }}`; a whole value
    `{{ connections.<database or cache> }}` becomes the name of a Secret whose key `url`
    holds that connection URL (never the URL itself)."""

    chart: str | None = Field(None, min_length=1, max_length=500, description="oci://host/"
                              "path/name, or a chart name in `repository`")
    path: str | None = Field(
        None, min_length=1, max_length=300, pattern=r"^[A-Za-z0-9_.@+-]+(/[A-Za-z0-9_.@+-]+)*$",
        description="Or a folder of the pull request's repository (deploy/chart), read at "
                    "each deploy from the PR's head commit: a PR that changes the chart "
                    "previews the change")
    repository: str | None = Field(None, pattern=r"^https?://\S+$",
                                   description="A chart repository's URL (chart: its name)")
    version: str | None = Field(None, max_length=100)
    values: dict[str, Any] = Field(default_factory=dict)
    image_tag_values: list[ValuePath] = Field(
        default_factory=list, description="Values set to the PR's head commit, as dotted "
        "paths (image.tag)")
    public: bool = Field(False, description="Its Ingress answers at <name>-pr-<n>.<domain> "
                         "(give it `{{ hosts.<name> }}`); the PR lists that URL")
    depends_on: list[str] = Field(
        default_factory=list, description="Databases and caches it uses: made before it")
    rollout_timeout_seconds: int = Field(600, ge=10, le=3600)

    @field_validator("chart")
    @classmethod
    def _chart_source(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(("http://", "https://", "file:", "/", ".")):
            raise ValueError(f"chart {value!r}: give oci://host/path/name, a chart name "
                             "with `repository`, or `path` for a folder of the repository")
        return value

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and {".", ".."} & set(value.split("/")):
            raise ValueError(f"path {value!r}: give the folder's path from the repository's "
                             "root, without . or .. (deploy/chart)")
        return value

    @model_validator(mode="after")
    def _source(self) -> Chart:
        if self.path is not None:
            if self.chart is not None or self.repository is not None or self.version:
                raise ValueError(f"chart {self.name}: `path` names a folder of the repository "
                                 "(its Chart.yaml says the version); give it without `chart`, "
                                 "`repository` or `version`")
            return self
        if self.chart is None:
            raise ValueError(f"chart {self.name}: say where the chart is: `chart` (oci:// or "
                             "a name in `repository`) or `path` (a folder of the repository)")
        if not self.chart.startswith("oci://") and self.repository is None:
            raise ValueError(f"chart {self.name}: {self.chart!r} is neither an oci:// "
                             "reference nor a name in a `repository`")
        return self


def chart_strings(values: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string in a chart's values, with its dotted path (lists by index)."""
    if isinstance(values, str):
        return [(path, values)]
    if isinstance(values, dict):
        return [found for key, value in values.items()
                for found in chart_strings(value, f"{path}.{key}" if path else str(key))]
    if isinstance(values, list):
        return [found for i, value in enumerate(values)
                for found in chart_strings(value, f"{path}.{i}" if path else str(i))]
    return []


def chart_source(path: str | None, chart: str | None, version: str | None = None) -> str:
    """Where a chart comes from, in a few words (step summaries, messages): a folder of
    the repository, or a chart with its version when one is asked for."""
    if path is not None:
        return f"{path} of the repository"
    return f"{chart or ''}" + (f" {version}" if version else "")
