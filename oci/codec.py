"""JSON to the spec model and back: one walker driven by the dataclasses' type hints.

Each model type gets one converter, built on first use from `typing.get_type_hints` and
cached, so a config.json is parsed by plain function calls with no reflection per value.
Errors name the JSON path of the value (`linux.resources.memory.limit`). Unknown JSON
fields are ignored, as runc ignores them, so a config written for a newer spec still loads.
A JSON null is read as "not set", as Go's encoding/json reads it into pointers and slices.
"""

import enum
import errno
import json
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar, cast

from skiff.oci.spec import (
    ContainerState,
    LinuxNamespaceType,
    Process,
    Spec,
    SpecError,
    State,
    key_path,
)
from skiff.oci.validate import validate_process, validate_spec

T = TypeVar("T")
_Convert = Callable[[object, str], object]

# How an unknown enum value is named in "unknown namespace type "foo"".
_ENUM_NOUNS: dict[type[enum.Enum], str] = {
    LinuxNamespaceType: "namespace type",
    ContainerState: "container status",
}


def parse_spec(data: object, *, require_process: bool = True) -> Spec:
    """A validated Spec from decoded config.json. `require_process=False` admits a config
    without `process`, which the spec allows for every operation but create."""
    spec = from_json(Spec, data)
    validate_spec(spec, require_process=require_process)
    return spec


def load_spec(path: str | os.PathLike[str], *, require_process: bool = True) -> Spec:
    """parse_spec on a file; every error names the file."""
    return read_spec(path, require_process=require_process)[0]


def read_spec(path: str | os.PathLike[str], *, require_process: bool = True) -> tuple[Spec, dict[str, Any]]:
    """load_spec, and the decoded JSON as well: a runtime that stores the config keeps it
    as it came instead of encoding the Spec again."""
    data = _load_json(path)
    try:
        return parse_spec(data, require_process=require_process), cast(dict[str, Any], data)
    except SpecError as e:
        raise SpecError(e.field, e.reason, source=os.fspath(path)) from None


def parse_process(data: object) -> Process:
    """A validated Process from decoded JSON, as `exec --process FILE` gives it."""
    process = from_json(Process, data)
    validate_process(process, "")
    return process


def load_process(path: str | os.PathLike[str]) -> Process:
    data = _load_json(path)
    try:
        return parse_process(data)
    except SpecError as e:
        raise SpecError(e.field, e.reason, source=os.fspath(path)) from None


def parse_state(data: object) -> State:
    """The State a hook reads on stdin."""
    return from_json(State, data)


def spec_to_dict(obj: object) -> dict[str, Any]:
    """Any model object (Spec, State, Process, ...) as camelCase JSON: fields left at their
    default (None, empty, false) are omitted, as Go's `omitempty` omits them."""
    out = _to_json(obj)
    if not isinstance(out, dict):
        raise TypeError(f"not a spec model object: {type(obj).__name__}")
    return out


def from_json(cls: type[T], data: object, path: str = "") -> T:
    """Convert decoded JSON to model type `cls`; `path` prefixes the field paths in errors."""
    return cast(T, _converter(cls)(data, path))


# --- JSON to model ------------------------------------------------------------------


def _load_json(path: str | os.PathLike[str]) -> object:
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, "")
        reason = (e.strerror or str(e)).lower() + (f" ({code})" if code else "")
        raise SpecError("", f"cannot read: {reason}", source=source) from e
    return decode_json(raw, source)


def decode_json(raw: bytes | str, source: str | None) -> object:
    """json.loads with an error that says where (`config.json: invalid json at line 3 ...`)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        reason = f"invalid json at line {e.lineno} column {e.colno}: {e.msg[:1].lower()}{e.msg[1:]}"
        raise SpecError("", reason, source=source) from None
    except UnicodeDecodeError as e:
        raise SpecError("", f"invalid json: not utf-8 at byte {e.start}", source=source) from None


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _camel(name: str) -> str:
    first, *rest = name.rstrip("_").split("_")
    return first + "".join(part.capitalize() for part in rest)


_converters: dict[object, _Convert] = {}


def _converter(hint: object) -> _Convert:
    conv = _converters.get(hint)
    if conv is None:
        conv = _converters[hint] = _build_converter(hint)
    return conv


def _build_converter(hint: object) -> _Convert:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is types.UnionType or origin is typing.Union:
        inner_types = [a for a in args if a is not type(None)]
        if len(inner_types) != 1:
            raise TypeError(f"only X | None unions are supported, not {hint!r}")
        return _optional(_converter(inner_types[0]))
    if origin is tuple:
        return _list(_converter(args[0]))
    if origin is dict:
        return _map(_converter(args[1]))
    if hint is str:
        return _str
    if hint is bool:
        return _bool
    if hint is int:
        return _int
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    if isinstance(hint, type) and is_dataclass(hint):
        return _dataclass(hint)
    raise TypeError(f"no JSON converter for {hint!r}")


def _str(value: object, path: str) -> object:
    if isinstance(value, str):
        return value
    raise SpecError(path, f"expected a string, got {_show(value)}")


def _bool(value: object, path: str) -> object:
    if isinstance(value, bool):
        return value
    raise SpecError(path, f"expected a boolean, got {_show(value)}")


def _int(value: object, path: str) -> object:
    # bool is an int subclass in Python; in JSON it is not a number
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise SpecError(path, f"expected an integer, got {_show(value)}")


def _optional(inner: _Convert) -> _Convert:
    def convert(value: object, path: str) -> object:
        return None if value is None else inner(value, path)

    return convert


def _list(item: _Convert) -> _Convert:
    def convert(value: object, path: str) -> object:
        if not isinstance(value, list):
            raise SpecError(path, f"expected a list, got {_show(value)}")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return convert


def _map(item: _Convert) -> _Convert:
    def convert(value: object, path: str) -> object:
        if not isinstance(value, dict):
            raise SpecError(path, f"expected an object, got {_show(value)}")
        return {k: item(v, key_path(path, k)) for k, v in value.items()}

    return convert


def _enum(cls: type[enum.Enum]) -> _Convert:
    noun = _ENUM_NOUNS.get(cls, "value")

    def convert(value: object, path: str) -> object:
        if not isinstance(value, str):
            raise SpecError(path, f"expected a string, got {_show(value)}")
        try:
            return cls(value)
        except ValueError:
            raise SpecError(path, f"unknown {noun} {_show(value)}") from None

    return convert


def _dataclass(cls: type[Any]) -> _Convert:
    hints = typing.get_type_hints(cls)
    plan: list[tuple[str, str, _Convert, bool]] = []
    for f in fields(cls):
        key = f.metadata.get("json") or _camel(f.name)
        required = f.default is MISSING and f.default_factory is MISSING
        plan.append((f.name, key, _converter(hints[f.name]), required))

    def convert(value: object, path: str) -> object:
        if not isinstance(value, dict):
            raise SpecError(path, f"expected an object, got {_show(value)}")
        kwargs: dict[str, object] = {}
        for name, key, conv, required in plan:
            item = value.get(key)
            if item is not None:
                kwargs[name] = conv(item, _member(path, key))
            elif required:
                raise SpecError(_member(path, key), "required")
        return cls(**kwargs)

    return convert


# --- model to JSON ------------------------------------------------------------------

_REQUIRED = object()


_emit_plans: dict[type[Any], tuple[tuple[str, str, object], ...]] = {}


def _emit_plan(cls: type[Any]) -> tuple[tuple[str, str, object], ...]:
    if cls in _emit_plans:
        return _emit_plans[cls]
    plan = []
    for f in fields(cls):
        if f.default is not MISSING:
            default: object = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        plan.append((f.name, f.metadata.get("json") or _camel(f.name), default))
    _emit_plans[cls] = result = tuple(plan)
    return result


def _to_json(value: object) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if is_dataclass(value):
        out: dict[str, Any] = {}
        for name, key, default in _emit_plan(type(value)):
            item = getattr(value, name)
            if default is not _REQUIRED and item == default:
                continue
            out[key] = _to_json(item)
        return out
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
