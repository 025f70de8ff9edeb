"""The policy engine's one error (issue 10: ``policies`` imports nothing above it).

``PolicyError`` says what is wrong with a policy document: file, rule and field, one line
per problem. The data-plane library wraps it into its
:class:`~patgate.middleware.errors.ConfigError` where it loads policies, so applications
catch one configuration error.
"""

from __future__ import annotations

__all__ = ["PolicyError"]


class PolicyError(ValueError):
    """An invalid, unreadable or unparsable policy."""
