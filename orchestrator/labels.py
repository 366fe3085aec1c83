"""Labels and label selectors, as Kubernetes reads them (apimachinery `pkg/labels/selector.go`,
`pkg/apis/meta/v1/helpers.go` LabelSelectorAsSelector).

Two ways in, one `Selector` out:

    parse("app=web,tier!=db,env in (prod,staging),!canary")   the `-l` string of `get`
    from_label_selector({"matchLabels": {...}, "matchExpressions": [...]})   an object's field

Matching follows Kubernetes: `!=` and `notin` also match objects without the key; `in`,
`=`, `>` and `<` need it. An empty selector matches everything.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from skiff.errors import InvalidArgument

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class Operator(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = ">"
    LESS_THAN = "<"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op, value = self.operator, labels.get(self.key)
        if op is Operator.EXISTS:
            return value is not None
        if op is Operator.DOES_NOT_EXIST:
            return value is None
        if op in (Operator.NOT_EQUALS, Operator.NOT_IN):
            return value is None or value not in self.values
        if value is None:
            return False
        if op in (Operator.EQUALS, Operator.IN):
            return value in self.values
        try:  # > and <: integers on both sides, else no match (as Kubernetes)
            have, want = int(value), int(next(iter(self.values)))
        except ValueError:
            return False
        return have > want if op is Operator.GREATER_THAN else have < want

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if op in (Operator.IN, Operator.NOT_IN):
            return f"{self.key} {op.value} ({','.join(sorted(self.values))})"
        return f"{self.key}{op.value}{next(iter(self.values))}"


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


EVERYTHING = Selector()


def check_key(key: str, field: str) -> None:
    """A label key: an optional DNS subdomain prefix and '/', then a name of at most 63
    characters, alphanumeric at both ends."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        raise InvalidArgument(f"{field}: {key!r}: the prefix before '/' must be a DNS subdomain "
                              "(lower case letters, digits, '-' and '.')")
    if not _NAME.fullmatch(name):
        raise InvalidArgument(f"{field}: {key!r}: a label key's name must be 1-63 letters, digits, "
                              "'-', '_' or '.', starting and ending with a letter or digit")


def check_value(value: str, field: str) -> None:
    if value and not _NAME.fullmatch(value):
        raise InvalidArgument(f"{field}: {value!r}: a label value must be empty or 1-63 letters, digits, "
                              "'-', '_' or '.', starting and ending with a letter or digit")


def check_labels(labels: Any, field: str) -> dict[str, str]:
    """An object's metadata.labels (or a matchLabels): a map of valid keys to valid values."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise InvalidArgument(f"{field}: must be a map of strings, got {type(labels).__name__}")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(f"{field}.{key}: keys and values must be strings, got {value!r}")
        check_key(key, f"{field}")
        check_value(value, f"{field}.{key}")
    return dict(labels)


# -- the `-l` string ---------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|<|>|[^\s!=(),<>]+)")


def parse(text: str, field: str = "selector") -> Selector:
    """`app=web,tier!=db,env in (a,b),env notin (c),canary,!legacy,replicas>2`."""
    tokens = _tokens(text, field)
    requirements: list[Requirement] = []
    i = 0
    while i < len(tokens):
        i, requirement = _requirement(tokens, i, text, field)
        requirements.append(requirement)
        if i < len(tokens):
            if tokens[i] != ",":
                raise InvalidArgument(f"{field} {text!r}: expected ',' before {tokens[i]!r}")
            i += 1
            if i == len(tokens):
                raise InvalidArgument(f"{field} {text!r}: a requirement must follow ','")
    return Selector(tuple(requirements))


def _tokens(text: str, field: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InvalidArgument(f"{field} {text!r}: cannot read it at position {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def _requirement(tokens: list[str], i: int, text: str, field: str) -> tuple[int, Requirement]:
    def at(j: int) -> str:
        return tokens[j] if j < len(tokens) else ""

    if at(i) == "!":
        key = at(i + 1)
        check_key(key, f"{field} {text!r}")
        return i + 2, Requirement(key, Operator.DOES_NOT_EXIST)
    key = at(i)
    check_key(key, f"{field} {text!r}")
    op = at(i + 1)
    if op in ("", ","):
        return i + 1, Requirement(key, Operator.EXISTS)
    if op in ("=", "==", "!=", ">", "<"):
        value = at(i + 2)
        if value in (",", "(", ")", "!", "=", "==", "!=", "<", ">"):
            value = ""
            end = i + 2
        else:
            end = i + 3
        if op in (">", "<"):
            if not re.fullmatch(r"-?\d+", value):
                raise InvalidArgument(f"{field} {text!r}: {key}{op} wants an integer, got {value!r}")
            operator = Operator.GREATER_THAN if op == ">" else Operator.LESS_THAN
        else:
            check_value(value, f"{field} {text!r}")
            operator = Operator.NOT_EQUALS if op == "!=" else Operator.EQUALS
        return end, Requirement(key, operator, frozenset({value}))
    if op in ("in", "notin"):
        if at(i + 2) != "(":
            raise InvalidArgument(f"{field} {text!r}: '{key} {op}' wants a list in parentheses")
        values, j = [], i + 3
        while at(j) != ")":
            if at(j) == "":
                raise InvalidArgument(f"{field} {text!r}: ')' is missing")
            if at(j) != ",":
                check_value(at(j), f"{field} {text!r}")
                values.append(at(j))
            j += 1
        if not values:
            raise InvalidArgument(f"{field} {text!r}: '{key} {op} ()' wants at least one value")
        return j + 1, Requirement(key, Operator.IN if op == "in" else Operator.NOT_IN, frozenset(values))
    raise InvalidArgument(f"{field} {text!r}: unknown operator {op!r} after {key!r} "
                          "(=, ==, !=, in, notin, >, <)")


# -- metav1.LabelSelector --------------------------------------------------------------------

_EXPRESSION_OPERATORS = {"In": Operator.IN, "NotIn": Operator.NOT_IN, "Exists": Operator.EXISTS,
                         "DoesNotExist": Operator.DOES_NOT_EXIST}


def from_label_selector(selector: Any, field: str = "selector") -> Selector:
    """A LabelSelector object (`spec.selector` of a ReplicaSet, Deployment, Job, DaemonSet)."""
    if not isinstance(selector, dict):
        raise InvalidArgument(f"{field}: must be an object with matchLabels and/or matchExpressions")
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise InvalidArgument(f"{field}.{sorted(unknown)[0]}: unknown field (matchLabels, matchExpressions)")
    requirements = [Requirement(k, Operator.EQUALS, frozenset({v}))
                    for k, v in sorted(check_labels(selector.get("matchLabels"), f"{field}.matchLabels").items())]
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise InvalidArgument(f"{field}.matchExpressions: must be a list")
    for n, e in enumerate(expressions):
        where = f"{field}.matchExpressions[{n}]"
        if not isinstance(e, dict):
            raise InvalidArgument(f"{where}: must be an object with key, operator and values")
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if not isinstance(key, str):
            raise InvalidArgument(f"{where}.key: required")
        check_key(key, f"{where}.key")
        if op not in _EXPRESSION_OPERATORS:
            raise InvalidArgument(f"{where}.operator: {op!r}: must be one of {', '.join(_EXPRESSION_OPERATORS)}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"{where}.values: must be a list of strings")
        operator = _EXPRESSION_OPERATORS[op]
        if operator in (Operator.IN, Operator.NOT_IN) and not values:
            raise InvalidArgument(f"{where}.values: must be non-empty when operator is {op}")
        if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            raise InvalidArgument(f"{where}.values: must be empty when operator is {op}")
        for v in values:
            check_value(v, f"{where}.values")
        requirements.append(Requirement(key, operator, frozenset(values)))
    return Selector(tuple(requirements))
