"""Notifications for the token lifecycle (issue 14): mail and signed webhooks from the
audit events, and expiry reminders — at least once, nothing lost (docs/notifications.md).

========== ===========================================================================
module     holds
========== ===========================================================================
worker     the delivery worker: the consumer group over the audit streams, delivery,
           backoff, dead letters, metrics (``patgate notify``, inside ``serve``)
outbox     the durable jobs: idempotency keys, leases, retries, dead letters, attempts
fanout     one audit event → its mail and webhook jobs (who is mailed, what is sent)
reminders  expiry reminders from the expiry index, once per token, lead and expiry
mail       SMTP delivery (aiosmtplib: STARTTLS, implicit TLS, AUTH) and the templates
webhooks   Standard Webhooks signing, endpoint URL checks, one delivery attempt
endpoints  an org's webhook endpoints (admins)
setup      all of it from Settings, for serve, notify, the API and the CLI
========== ===========================================================================
"""

from __future__ import annotations

__all__: list[str] = []
