"""The route → scope policy language and engine."""
