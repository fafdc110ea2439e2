"""The constitution: a lab's rules as a validated, hashable TOML file.

`load(path)` gives a `Constitution` or raises `ConstitutionError` with one line per problem;
`constitution_hash` is the canonical hash that pins a version in the ledger.
"""

from constitution.loader import (
    ConstitutionError,
    check_succession,
    constitution_hash,
    default_text,
    json_schema,
    load,
    load_default,
    parse_text,
)
from constitution.schema import GATE_SEVERITY, Constitution, GateMetric, GateState

__all__ = [
    "Constitution", "ConstitutionError", "GateMetric", "GateState", "GATE_SEVERITY",
    "check_succession", "constitution_hash", "default_text", "json_schema", "load",
    "load_default", "parse_text",
]
