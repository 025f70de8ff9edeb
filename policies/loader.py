"""Reading policy documents: TOML (stdlib ``tomllib``) or, optionally, YAML.

The format follows the file name: ``.yaml``/``.yml`` is YAML (needs the ``yaml`` extra,
PyYAML), anything else TOML. Syntax errors become a one-line
:class:`~patgate.policies.errors.PolicyError` naming the file and position.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from patgate.policies.errors import PolicyError

__all__ = ["parse_document", "read_text"]

_MAX_BYTES = 4 * 1024 * 1024  # a policy is a few KiB; refuse to parse something huge


def read_text(path: Path) -> str:
    """The file's text (UTF-8); ``PolicyError`` if it cannot be read."""
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc.strerror or exc}") from exc
    if len(data) > _MAX_BYTES:
        raise PolicyError(f"{path}: policy file larger than {_MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: policy file is not UTF-8 ({exc.reason})") from exc


def _is_yaml(source: str) -> bool:
    return source.lower().endswith((".yaml", ".yml"))


def parse_document(text: str, source: str) -> Mapping[str, Any]:
    """Parse TOML or YAML text into a mapping; ``source`` names it in errors."""
    if not _is_yaml(source):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: TOML syntax error: {exc}") from exc
    try:
        import yaml  # type: ignore[import-untyped]  # optional extra, imported on use
    except ImportError as exc:
        raise PolicyError(
            f"{source}: YAML policies need PyYAML (pip install 'patgate[yaml]')"
        ) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: YAML syntax error: {' '.join(str(exc).split())}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise PolicyError(f"{source}: a policy document must be a mapping at the top level")
    return doc
