"""`konsilium pull REPO FILE`: fetch a GGUF with huggingface-hub and write its manifest.

huggingface-hub does the downloading (progress bar, resume of partial files, the local cache,
`HF_ENDPOINT` and `HF_HUB_OFFLINE`); we verify that the file is a GGUF we can read, hash it, and
write a manifest whose `checksum_sha256` pins exactly these bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import yaml

from konsilium.manifest import Manifest
from model_store.checksum import sha256_of
from model_store.estimate import read_gguf_shape

_QUANT = re.compile(r"(?i)(?:^|[.\-_])((?:I?Q\d+_[A-Z0-9_]+)|F16|BF16|F32|Q\d_\d)(?=\.gguf$)")


def pull(
    repo: str, filename: str, models_dir: Path, *, revision: str | None = None, model_id: str | None = None
) -> Path:
    from huggingface_hub import hf_hub_download

    local = Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    shape = read_gguf_shape(local)  # refuses anything that is not a readable GGUF
    manifest = Manifest(
        id=model_id or default_id(filename),
        family=shape.architecture,
        format="gguf",
        path=str(local),
        quant=quant_of(filename),
        context_length=shape.context_length,
        revision=f"{repo}@{local.parent.name}",  # the snapshot folder is the commit hash
        checksum_sha256=sha256_of(local),
        description=f"{repo}/{filename}",
    )
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{manifest.id.replace('/', '_')}.yaml"
    raw = msgspec.to_builtins(manifest)
    target.write_text(yaml.safe_dump(_non_default(raw), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


def default_id(filename: str) -> str:
    stem = Path(filename).name.removesuffix(".gguf").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-") or "model"


def quant_of(filename: str) -> str:
    match = _QUANT.search(Path(filename).name)
    return match.group(1).upper() if match else ""


def _non_default(raw: dict[str, object]) -> dict[str, object]:
    defaults = msgspec.to_builtins(Manifest(id="x"))
    return {k: v for k, v in raw.items() if k == "id" or v != defaults.get(k)}
