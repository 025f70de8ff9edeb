"""patgate's reusable library: token format, store, cache, ASGI middleware, metrics."""
