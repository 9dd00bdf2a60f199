"""Routing: from what a request asks for to the target that answers it (pure policy)."""
