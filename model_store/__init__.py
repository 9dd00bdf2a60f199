"""Model store: the registry of models, their backends and their lifecycle.

Nothing here knows about HTTP. The gateway hands a validated `GenerationRequest` to a backend's
`stream()` and receives `Event`s back.
"""
