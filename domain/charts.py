"""Helm charts as elements of a blueprint. The planner's rule is in
domain/plan_elements.py, the activity pair in activities/kubernetes/charts.py."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from domain.base import Named

ValuePath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
                                  max_length=200)]


class Chart(Named):
    """A Helm chart as part of the preview: the engine renders it (helm template) and
    applies what it renders itself, object by object, with its ownership marks, in the
    preview's namespace; a redeploy prunes what the new render no longer has.

    String values may hold `{{ urls.<app> }}`, `{{ hosts.<chart> }}` (this chart's own
    preview host when `public`), `{{ pr.number }}` and `{{ pr.head_sha }}`; a whole value
    `{{ connections.<database or cache> }}` becomes the name of a Secret whose key `url`
    holds that connection URL (never the URL itself)."""

    chart: str = Field(min_length=1, max_length=500, description="oci://host/path/name, or "
                       "a chart name in `repository`")
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
    def _chart_source(cls, value: str) -> str:
        if value.startswith(("http://", "https://", "file:", "/", ".")):
            raise ValueError(f"chart {value!r}: give oci://host/path/name, or a chart name "
                             "with `repository`")
        return value

    @model_validator(mode="after")
    def _source(self) -> Chart:
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
