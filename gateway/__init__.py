"""patgate's processes: gateway, forward-auth, management API, CLI, embedded store."""
