"""Where the running config came from, so that it can be read again (a reload) and its files
watched (`konsilium serve --watch`), and so that a model's manifest file can be found."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from konsilium.config import Config, default_config, load_config
from konsilium.manifest import manifest_files
from konsilium.manifest_file import manifest_file


@dataclass(frozen=True)
class ConfigSource:
    path: Path | None = None  # None: the built-in default (nothing on disk to read again)
    overrides: Mapping[str, object] = field(default_factory=dict)  # the command line's --host / --port

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<default>"

    def load(self) -> Config:
        """The config as on disk now; raises `ConfigError` with every problem."""
        config = load_config(self.path) if self.path is not None else default_config()
        return msgspec.structs.replace(config, **self.overrides) if self.overrides else config

    def models_dir(self, config: Config) -> Path | None:
        if self.path is None or config.models_dir is None:
            return None
        return (self.path.parent / config.models_dir).resolve()

    def files(self, config: Config) -> list[Path]:
        """What a change to means a new config: the file and the manifests of its models_dir."""
        if self.path is None:
            return []
        directory = self.models_dir(config)
        return [self.path, *(manifest_files(directory) if directory is not None and directory.is_dir() else [])]

    def manifest_file(self, config: Config, model_id: str) -> Path | None:
        return manifest_file(self.path, self.models_dir(config), model_id)
