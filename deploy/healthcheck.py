"""Container health check: exit 0 when a patgate listener answers ``/healthz`` with 2xx.

The image's ``HEALTHCHECK`` runs this (slim images have no curl). It asks the admin
listener (``patgate serve``/``gateway``/``api``) and then the authz listener (``patgate
authz``), on 127.0.0.1 at the ports of ``PATGATE_ADMIN_LISTEN``/``PATGATE_AUTHZ_LISTEN``,
so one check fits every role the image runs.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

__all__ = ["healthy", "main"]

_LISTENERS = (("PATGATE_ADMIN_LISTEN", "8081"), ("PATGATE_AUTHZ_LISTEN", "8082"))


def _ports(environ: Mapping[str, str]) -> list[str]:
    return [environ.get(var, default).rpartition(":")[2] for var, default in _LISTENERS]


def healthy(environ: Mapping[str, str], timeout: float = 2.0) -> bool:
    for port in _ports(environ):
        url = f"http://127.0.0.1:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if 200 <= response.status < 300:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return False


def main() -> None:
    sys.exit(0 if healthy(os.environ) else 1)


if __name__ == "__main__":
    main()
