"""API keys, tenants and rate limits (README "Keys and limits"): shared through Redis when
`redis_url` is set, else kept in a local SQLite file; the limiter's policy is pure (window.py)."""
