"""The one exception the worker's generation code raises for a request it refuses."""

from __future__ import annotations

from model_store.llama_cpp.ipc import FailureKind


class GenerationFailure(Exception):
    """A request the worker refuses; `kind` maps to the gateway's error tree in the parent."""

    def __init__(self, kind: FailureKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.param = param
