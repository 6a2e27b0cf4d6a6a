"""Label selectors behave as Kubernetes' do, in both their structured and string forms."""

from __future__ import annotations

import pytest

from slb.selector import LabelSelector, Operator, Requirement

WEB_PROD = {"app": "web", "env": "prod", "tier": "front"}
WEB_DEV = {"app": "web", "env": "dev"}
DB = {"app": "db", "env": "prod", "legacy": "yes"}


@pytest.mark.parametrize(
    ("text", "matching"),
    [
        ("app=web", ["web_prod", "web_dev"]),
        ("app==web", ["web_prod", "web_dev"]),
        ("app!=web", ["db"]),
        ("env in (prod, stage)", ["web_prod", "db"]),
        ("env notin (prod)", ["web_dev"]),
        ("tier", ["web_prod"]),
        ("!legacy", ["web_prod", "web_dev"]),
        ("app=web,env in (prod),tier", ["web_prod"]),
        ("app=web, !tier", ["web_dev"]),
        ("app in (web,db),env=prod,!legacy", ["web_prod"]),
    ],
)
def test_string_selectors_match_like_kubectl(text: str, matching: list[str]) -> None:
    labels = {"web_prod": WEB_PROD, "web_dev": WEB_DEV, "db": DB}
    selector = LabelSelector.parse(text)
    assert sorted(name for name, lbl in labels.items() if selector.matches(lbl)) == sorted(matching)
    # The canonical string form parses back to the same selector.
    assert LabelSelector.parse(str(selector)) == selector


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty selector"),
        ("app=web,,env=prod", "empty requirement"),
        ("env in (prod", "unbalanced"),
        ("env in prod)", "unbalanced"),
        ("bad key!=x", "invalid label key"),
        ("app=-web-", "invalid label value"),
        ("env in ()", "needs at least one value"),
        ("app=web,app=db", "already required"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        LabelSelector.parse(text)


def test_empty_selector_matches_nothing() -> None:
    assert not LabelSelector().matches(WEB_PROD)


def test_requirements_are_normalised() -> None:
    req = Requirement(key="env", operator=Operator.IN, values=("stage", "prod", "prod"))
    assert req.values == ("prod", "stage")
    with pytest.raises(ValueError, match="takes no values"):
        Requirement(key="env", operator=Operator.EXISTS, values=("x",))


def test_prefixed_keys_are_valid() -> None:
    selector = LabelSelector.parse("openslb.io/expose=true")
    assert selector.matches({"openslb.io/expose": "true"})
    assert not selector.matches({"expose": "true"})
