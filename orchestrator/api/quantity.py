"""Resource quantities as Kubernetes writes them (apimachinery `pkg/api/resource/quantity.go`):
`100m` CPU, `0.5`, `64Mi` memory, `1G`, `1e3`. The scheduler adds and compares them exactly:
CPU in millicores, everything else in units, both as integers (rounded up, as Kubernetes
rounds a request)."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from skiff.errors import InvalidArgument

_SUFFIXES = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?")


def parse(value: object, field: str) -> Decimal:
    """The quantity's value in base units (cores, bytes)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidArgument(f"{field}: {value!r}: a quantity is a number or a string such as 100m or 64Mi")
    text = str(value).strip()
    m = _QUANTITY.fullmatch(text)
    if m is None:
        raise InvalidArgument(f"{field}: {value!r}: quantities must match the regular expression "
                              "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (e.g. 100m, 0.5, 64Mi)")
    try:
        number = Decimal(m.group(1)) * _SUFFIXES[m.group(2) or ""]
    except InvalidOperation:
        raise InvalidArgument(f"{field}: {value!r}: not a number") from None
    if number < 0:
        raise InvalidArgument(f"{field}: {value!r}: must be greater than or equal to 0")
    return number


def milli(value: object, field: str) -> int:
    """CPU in millicores, rounded up."""
    return math.ceil(parse(value, field) * 1000)


def units(value: object, field: str) -> int:
    """Memory (and other resources) in whole units, rounded up."""
    return math.ceil(parse(value, field))
