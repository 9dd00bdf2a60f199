"""The HTTP layer: OpenAI wire types, validation, SSE framing and error rendering."""
