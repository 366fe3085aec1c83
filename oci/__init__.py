"""The OCI runtime-spec config.json as typed data: models, parsing, validation, defaults.

Data only: nothing here makes a syscall beyond reading a file, so every layer above may
import it. `skiff-runc` imports it on every start: keep its imports to json, typing,
dataclasses and enum.
"""

from skiff.oci.codec import (
    from_json,
    load_process,
    load_spec,
    read_spec,
    parse_process,
    parse_spec,
    parse_state,
    spec_to_dict,
)
from skiff.oci.defaults import OCI_VERSION, default_spec
from skiff.oci.features import features
from skiff.oci.spec import ContainerState, LinuxNamespaceType, Spec, SpecError, State
from skiff.oci.validate import validate_process, validate_spec

__all__ = [
    "OCI_VERSION",
    "ContainerState",
    "LinuxNamespaceType",
    "Spec",
    "SpecError",
    "State",
    "default_spec",
    "features",
    "from_json",
    "load_process",
    "load_spec",
    "read_spec",
    "parse_process",
    "parse_spec",
    "parse_state",
    "spec_to_dict",
    "validate_process",
    "validate_spec",
]
