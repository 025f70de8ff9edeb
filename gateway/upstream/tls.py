"""TLS to an ``https`` upstream, the same for every client of the package.

One :class:`ssl.SSLContext` from :func:`upstream_ssl_context`: the certificate chain is
verified against ``PATGATE_UPSTREAM_CA_FILE`` (a PEM bundle, e.g. a private CA) or, when
that is unset, the system store; the host name (or IP address) of ``PATGATE_UPSTREAM_URL``
is always checked against the certificate (RFC 9110 §4.3.4). A failed handshake is an
:class:`~patgate.middleware.errors.UpstreamConnectError` (502), raised by the client.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from patgate.middleware.errors import ConfigError

__all__ = ["upstream_ssl_context"]


def upstream_ssl_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context: ``CERT_REQUIRED``, ``check_hostname``, TLS 1.2 or later."""
    try:
        # create_default_context: CERT_REQUIRED and check_hostname, Python's secure defaults.
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:  # missing file, not PEM (ssl.SSLError is an OSError)
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"PATGATE_UPSTREAM_CA_FILE: cannot load {ca_file}: {reason}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
