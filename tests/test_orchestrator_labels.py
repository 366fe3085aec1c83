"""Label selectors as kubectl's -l and an object's spec.selector read them."""

from __future__ import annotations

import pytest

from skiff.errors import InvalidArgument
from skiff.orchestrator.labels import EVERYTHING, check_labels, from_label_selector, parse

WEB = {"app": "web", "tier": "front", "env": "prod", "replicas": "3"}


@pytest.mark.parametrize("text, matches", [
    ("app=web", True), ("app==web", True), ("app=db", False),
    ("app!=db", True), ("missing!=x", True), ("app!=web", False),
    ("env in (prod,staging)", True), ("env in (dev)", False), ("missing in (x)", False),
    ("env notin (dev)", True), ("missing notin (x)", True), ("env notin (prod)", False),
    ("tier", True), ("missing", False), ("!missing", True), ("!tier", False),
    ("replicas>2", True), ("replicas<2", False), ("app>2", False),
    ("app=web,tier=front,env in (prod)", True), ("app=web,tier=back", False),
    ("  app = web , !canary ", True), ("example.com/team!=x", True), ("empty=", False),
])
def test_parse_and_match(text: str, matches: bool) -> None:
    assert parse(text).matches(WEB) is matches


def test_empty_selector_matches_everything_and_round_trips() -> None:
    assert parse("").empty and parse("").matches({}) and EVERYTHING.matches(None)
    text = "app=web,env in (prod,staging),!canary,tier"
    assert str(parse(text)) == text and parse(str(parse(text))) == parse(text)


@pytest.mark.parametrize("text, message", [
    ("app=web,", "a requirement must follow ','"),
    ("app in prod", "wants a list in parentheses"),
    ("app in (a,b", r"'\)' is missing"),
    ("app in ()", "at least one value"),
    ("app=web tier=x", "expected ','"),
    ("-bad=x", "a label key's name"),
    ("Example.com/x=y", "the prefix before '/'"),
    ("app=bad value", "expected ','"),
    ("app=-x", "a label value"),
    ("n>two", "wants an integer"),
])
def test_bad_selectors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse(text)


def test_label_selector_object() -> None:
    selector = from_label_selector({"matchLabels": {"app": "web"},
                                    "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]},
                                                         {"key": "canary", "operator": "DoesNotExist"}]},
                                   "spec.selector")
    assert selector.matches(WEB) and not selector.matches({**WEB, "canary": "1"})
    assert from_label_selector({}).matches({"anything": "at all"})


@pytest.mark.parametrize("selector, message", [
    ({"matchLabels": {"app": 1}}, r"spec.selector.matchLabels.app: keys and values must be strings"),
    ({"matchExpressions": [{"key": "a", "operator": "Near"}]},
     r"spec.selector.matchExpressions\[0\].operator: 'Near': must be one of In, NotIn, Exists, DoesNotExist"),
    ({"matchExpressions": [{"key": "a", "operator": "In"}]},
     r"spec.selector.matchExpressions\[0\].values: must be non-empty when operator is In"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
     r"matchExpressions\[0\].values: must be empty when operator is Exists"),
    ({"matchLabel": {}}, r"spec.selector.matchLabel: unknown field"),
    ("app=web", r"spec.selector: must be an object"),
])
def test_bad_label_selector_objects_name_the_field(selector: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        from_label_selector(selector, "spec.selector")


def test_labels_are_checked() -> None:
    assert check_labels({"app": "web", "k8s.io/x": ""}, "metadata.labels") == {"app": "web", "k8s.io/x": ""}
    with pytest.raises(InvalidArgument, match=r"metadata.labels.app: 'a b': a label value"):
        check_labels({"app": "a b"}, "metadata.labels")
    with pytest.raises(InvalidArgument, match="metadata.labels: must be a map"):
        check_labels(["app"], "metadata.labels")
