"""The HTTP API of the environment model (mounted by the app under /api).

Projects, environments, the elements of each blueprint collection (applications,
databases, ...: domain.blueprint.COLLECTIONS) and variables are plain CRUD; secrets
are write-only (a PUT stores a value, everything else sees metadata); blueprints are
imported as YAML or JSON and exported back. Every route needs `Authorization: Bearer
<token>`: the admin token from settings, an admin token from the store, or a token scoped
to one project (403 elsewhere).

The app provides `app.state.store` (store.Store) and `app.state.sealer`
(engine.sealing.Sealer); `app.state.admin_token` overrides the admin token setting.

Errors are JSON `ErrorBody`s naming the object and field (starter.api.errors).
"""

from starter.api import blueprints, clusters, projects, secrets, tokens, variables
from starter.api.auth import Principal
from starter.api.errors import ErrorBody, api_router

router = api_router()
# In the order the routes were always declared: the OpenAPI lists paths in this order.
for _routes in (projects, variables, secrets, clusters, blueprints, tokens):
    router.include_router(_routes.router)

__all__ = ["ErrorBody", "Principal", "router"]
