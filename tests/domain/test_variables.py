"""Variable resolution (domain/variables.py): precedence, targets, aliases, secrets.

The precedence rules are checked as properties over generated variable sets, against a
statement of the documented rules written independently here: the winner for a key is
the applicable candidate with the highest (override, scope level, target-specific).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.blueprint import AppliesTo, Variable, VariableKind, VariableScope
from domain.blueprint_file import parse_blueprint
from domain.secrets import SealedValue
from domain.variables import SecretVariable, Target, VariableError, resolve_variables

EXAMPLE = Path(__file__).parents[2] / "examples" / "preview.yaml"
APPS = ["web", "api"]
KEYS = ["A", "B", "C", "D"]
LEVEL = {VariableScope.project: 1, VariableScope.environment: 2, VariableScope.application: 3}


def sealed(tag: str) -> SealedValue:
    return SealedValue(key_id="k", wrapped_key=tag, nonce="n", ciphertext="c")


@st.composite
def plain_variable(draw: st.DrawFn) -> Variable:
    scope = draw(st.sampled_from(list(VariableScope)))
    return Variable(
        key=draw(st.sampled_from(KEYS)),
        value="",  # filled with a unique tag below, so the winner is identifiable
        scope=scope,
        application=draw(st.sampled_from(APPS)) if scope == VariableScope.application else None,
        kind=draw(st.sampled_from([VariableKind.value, VariableKind.override])),
        applies_to=draw(st.sampled_from(list(AppliesTo))),
    )


def coordinates(v: Variable) -> tuple[object, ...]:
    # What the store keeps unique: two variables never share all of these.
    return (v.key, v.scope, v.application, v.applies_to)


variable_sets = st.lists(plain_variable(), unique_by=coordinates, max_size=24).map(
    lambda vs: [v.model_copy(update={"value": f"v{i}"}) for i, v in enumerate(vs)]
)
builtin_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(["b1", "b2"]), max_size=3)


def applies(v: Variable | SecretVariable, target: Target, application: str) -> bool:
    if v.application not in (None, application):
        return False
    if v.applies_to == AppliesTo.both:
        return True
    return v.applies_to == (AppliesTo.previews if target == Target.preview
                            else AppliesTo.production)


def expected(
    variables: list[Variable], target: Target, application: str, builtins: dict[str, str]
) -> dict[str, str]:
    """The documented rule, stated directly."""
    result: dict[str, str] = dict(builtins)
    for key in {v.key for v in variables}:
        candidates = [v for v in variables if v.key == key and applies(v, target, application)]
        if not candidates:
            continue
        best = max(candidates, key=lambda v: (v.kind == VariableKind.override, LEVEL[v.scope],
                                               v.applies_to != AppliesTo.both))
        result[key] = best.value
    return result


@settings(max_examples=300, deadline=None, database=None)
@given(variable_sets, builtin_sets, st.sampled_from(list(Target)), st.sampled_from(APPS))
def test_precedence_matches_the_documented_rule(
    variables: list[Variable], builtins: dict[str, str], target: Target, application: str
) -> None:
    resolved = resolve_variables(variables, target=target, application=application,
                                 builtins=builtins)
    assert resolved == expected(variables, target, application, builtins)


@settings(max_examples=200, deadline=None, database=None)
@given(variable_sets, st.sampled_from(list(Target)), st.sampled_from(APPS), st.randoms())
def test_order_of_definition_does_not_matter(
    variables: list[Variable], target: Target, application: str, rnd: object
) -> None:
    shuffled = list(variables)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert resolve_variables(variables, target=target, application=application) == \
        resolve_variables(shuffled, target=target, application=application)


@settings(max_examples=200, deadline=None, database=None)
@given(variable_sets, st.sampled_from(list(Target)), st.sampled_from(APPS))
def test_override_beats_every_plain_value(
    variables: list[Variable], target: Target, application: str
) -> None:
    resolved = resolve_variables(variables, target=target, application=application)
    for key, value in resolved.items():
        overrides = [v for v in variables if v.key == key and applies(v, target, application)
                     and v.kind == VariableKind.override]
        if overrides:
            assert value in {v.value for v in overrides}


@settings(max_examples=200, deadline=None, database=None)
@given(variable_sets, st.sampled_from(list(Target)))
def test_other_applications_and_targets_never_leak_in(
    variables: list[Variable], target: Target
) -> None:
    resolved = resolve_variables(variables, target=target, application="web")
    seen = set(resolved.values())
    for v in variables:
        if v.application == "api" or not applies(v, target, "web"):
            assert v.value not in seen, f"{v} should not reach web in {target}"


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True),
       st.sampled_from(list(VariableScope)), st.sampled_from(list(Target)))
def test_an_alias_chain_resolves_to_its_end(
    chain: list[str], scope: VariableScope, target: Target
) -> None:
    """K0 -> K1 -> ... -> Kn (plain): every Ki resolves to Kn's value."""
    app = "web" if scope == VariableScope.application else None
    variables = [Variable(key=k, value=nxt, kind=VariableKind.alias, scope=scope, application=app)
                 for k, nxt in zip(chain, [*chain[1:], "END"], strict=True)]
    variables.append(Variable(key="END", value="final"))
    resolved = resolve_variables(variables, target=target, application="web")
    assert all(resolved[k] == "final" for k in chain)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.sampled_from([*KEYS, "E", "F"]), min_size=1, max_size=6, unique=True),
       st.sampled_from(list(Target)))
def test_alias_cycles_are_rejected_with_the_cycle_named(
    cycle: list[str], target: Target
) -> None:
    variables = [Variable(key=k, value=nxt, kind=VariableKind.alias)
                 for k, nxt in zip(cycle, [*cycle[1:], cycle[0]], strict=True)]
    variables.append(Variable(key="OTHER", value="x"))
    with pytest.raises(VariableError) as raised:
        resolve_variables(variables, target=target, application="web")
    named = re.search(r"cycle: (.*)$", str(raised.value))
    assert named, str(raised.value)
    path = named.group(1).split(" -> ")
    # The named path is the whole cycle, closed, starting anywhere on it.
    assert path[0] == path[-1] and len(path) == len(cycle) + 1
    start = cycle.index(path[0])
    assert path[:-1] == cycle[start:] + cycle[:start]


@settings(max_examples=200, deadline=None, database=None)
@given(variable_sets, st.sampled_from(list(Target)), st.sampled_from(APPS),
       st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(KEYS)), max_size=4))
def test_aliases_resolve_to_their_targets_resolution(
    variables: list[Variable], target: Target, application: str,
    aliases: list[tuple[str, str]],
) -> None:
    """Add application-level aliases on top of random values: an alias key sees exactly what
    its target key resolves to, or resolution fails naming a cycle or a missing key."""
    extra = {k: Variable(key=k, value=t, kind=VariableKind.alias, scope=VariableScope.application,
                         application=application, applies_to=AppliesTo.both)
             for k, t in aliases}
    variables = [v for v in variables
                 if coordinates(v) not in {coordinates(e) for e in extra.values()}]
    plain = resolve_variables(variables, target=target, application=application)
    all_vars = variables + list(extra.values())
    # The aliases rank (plain, application, both): an applicable override, or an
    # application-level value specific to this target, still beats them.
    def outranked(key: str) -> bool:
        return any(v.key == key and applies(v, target, application) and (
            v.kind == VariableKind.override
            or (v.scope == VariableScope.application and v.applies_to != AppliesTo.both))
            for v in variables)

    winners = {k: e for k, e in extra.items() if not outranked(k)}
    try:
        resolved = resolve_variables(all_vars, target=target, application=application)
    except VariableError as error:
        assert "cycle" in str(error) or "not set" in str(error)
        return

    def follow(key: str, seen: tuple[str, ...] = ()) -> str | SealedValue:
        if key in winners:
            assert key not in seen, "a cycle resolved without an error"
            return follow(winners[key].value, (*seen, key))
        return plain[key]

    for key in resolved:
        assert resolved[key] == follow(key)


def test_secrets_stay_sealed_and_follow_precedence() -> None:
    secrets = [
        SecretVariable(key="TOKEN", sealed=sealed("project")),
        SecretVariable(key="TOKEN", sealed=sealed("web"), scope=VariableScope.application,
                       application="web"),
        SecretVariable(key="DB_PASSWORD", sealed=sealed("preview"),
                       applies_to=AppliesTo.previews),
    ]
    variables = [Variable(key="TOKEN_ALIAS", value="TOKEN", kind=VariableKind.alias)]
    web = resolve_variables(variables, secrets, target=Target.preview, application="web")
    api = resolve_variables(variables, secrets, target=Target.production, application="api")
    assert web["TOKEN"] == sealed("web") and web["TOKEN_ALIAS"] == sealed("web")
    assert web["DB_PASSWORD"] == sealed("preview")
    assert api["TOKEN"] == sealed("project") and "DB_PASSWORD" not in api


def test_a_secret_declared_in_the_blueprint_resolves_to_its_sealed_value() -> None:
    """The example declares SESSION_SECRET (kind secret) where the store holds its value."""
    declaration = Variable(key="SESSION_SECRET", kind=VariableKind.secret,
                           scope=VariableScope.application, application="web")
    secret = SecretVariable(key="SESSION_SECRET", sealed=sealed("web"),
                            scope=VariableScope.application, application="web")
    for target in Target:
        resolved = resolve_variables([declaration], [secret], target=target, application="web")
        assert resolved["SESSION_SECRET"] == sealed("web")


def test_a_secret_declaration_does_not_hide_the_sealed_value() -> None:
    declaration = Variable(key="TOKEN", kind=VariableKind.secret,
                           scope=VariableScope.application, application="web")
    secret = SecretVariable(key="TOKEN", sealed=sealed("project"))
    resolved = resolve_variables([declaration], [secret], target=Target.production,
                                 application="web")
    assert resolved["TOKEN"] == sealed("project")


def test_the_example_blueprint_resolves_as_documented() -> None:
    blueprint = parse_blueprint(EXAMPLE.read_text(), str(EXAMPLE))
    apps = [a.name for a in blueprint.applications]
    for app in apps:
        prod = resolve_variables(blueprint.variables, target=Target.production, application=app)
        prev = resolve_variables(blueprint.variables, target=Target.preview, application=app)
        # One project-level variable reaches every application in both targets...
        assert prod["API_URL"] == prev["API_URL"] == "http://api:8080"
        # ...and one override flips NODE_ENV in previews only.
        assert prod["NODE_ENV"] == "production"
        assert prev["NODE_ENV"] == "development"
        assert (prod["LOG_LEVEL"], prev["LOG_LEVEL"]) == ("info", "debug")
        assert ("PUBLIC_API" in prod) == (app == "web")
    web = resolve_variables(blueprint.variables, target=Target.preview, application="web")
    assert web["PUBLIC_API"] == web["API_URL"]
