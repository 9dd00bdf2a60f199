"""`konsilium keys create | list | revoke | update`: straight on the key store the gateway reads
(Redis with `redis_url`, else `<data_dir>/keys.sqlite`); a running gateway sees each change
within `tenancy.refresh_s`."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from entrypoints.commands import table
from konsilium.config import Config
from konsilium.tenancy.keys import ApiKey, KeyStore, KeyStoreError, Usage, find, make_key
from konsilium.tenancy.service import open_store

FIELDS = ("tenant", "models", "rpm", "tpm", "max_parallel", "admin")
LIMITS = ("rpm", "tpm", "max_parallel")


def add_parsers(commands: Any, config_option: Any) -> None:
    """`commands`: the CLI's subparsers; `config_option(parser)` adds its `--config`."""
    keys = commands.add_parser("keys", help="API keys: create, list, revoke, update")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key; its secret is printed once")
    create.add_argument("--name", required=True)
    _key_options(create)
    config_option(create)
    config_option(actions.add_parser("list", help="every key with its usage"))
    revoke = actions.add_parser("revoke", help="the key stops working (on every replica within refresh_s)")
    revoke.add_argument("key", help="its name or id")
    config_option(revoke)
    update = actions.add_parser("update", help="change a key's tenant, models, limits (`none` clears one)")
    update.add_argument("key", help="its name or id")
    _key_options(update)
    config_option(update)


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", type=_text, help="the tenant whose LoRA adapters it may use")
    parser.add_argument("--models", type=_names, help="comma-separated models and adapters it may use (default: all)")
    parser.add_argument("--rpm", type=_limit, help="requests per minute")
    parser.add_argument("--tpm", type=_limit, help="tokens per minute (prompt + completion)")
    parser.add_argument("--max-parallel", type=_limit, help="requests at once")
    parser.add_argument("--admin", action=argparse.BooleanOptionalAction, help="may call the admin API")


def _text(value: str) -> str:
    return "" if value.lower() == "none" else value


def _names(value: str) -> list[str]:
    return [] if value.lower() == "none" else [n.strip() for n in value.split(",") if n.strip()]


def _limit(value: str) -> int:
    if value.lower() == "none":
        return 0
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("a limit is at least 1 (`none`: no limit)")
    return number


def _given(args: argparse.Namespace) -> dict[str, object]:
    """The options given on the command line, as key fields (`none`: cleared)."""
    given = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    cleared = {
        f for f, v in given.items() if (f == "tenant" and v == "") or (f in ("rpm", "tpm", "max_parallel") and v == 0)
    }
    return {f: None if f in cleared else v for f, v in given.items()}


def run(config: Config, args: argparse.Namespace) -> int:
    store = open_store(config, create=args.action == "create")
    try:
        return _act(store, args)
    except KeyStoreError as exc:
        print(f"konsilium keys: {exc}", file=sys.stderr)
        return 1
    except msgspec.ValidationError as exc:
        print(f"konsilium keys: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _act(store: KeyStore, args: argparse.Namespace) -> int:
    if args.action == "create":
        key, secret = make_key(args.name, **_given(args))
        store.add(key)
        print(secret)
        print(f"created key {key.name!r} (id {key.id}): the secret above is shown once, store it now", file=sys.stderr)
        return 0
    if args.action == "list":
        print(listing(store.list_keys(), store.usage()))
        return 0
    found = find(store.list_keys(), args.key)
    if found is None:
        print(f"konsilium keys: no key named {args.key!r}", file=sys.stderr)
        return 1
    key = found
    if args.action == "revoke":
        store.replace(msgspec.structs.replace(key, revoked=key.revoked or time.time()))
        print(f"revoked {key.name!r} (id {key.id})")
        return 0
    changed = msgspec.convert({**msgspec.to_builtins(key), **_given(args)}, ApiKey)
    store.replace(changed)
    print(f"updated {key.name!r} (id {key.id})")
    return 0


def listing(keys: list[ApiKey], usage: dict[str, Usage]) -> str:
    headers = ["NAME", "ID", "KEY", "TENANT", "MODELS", "RPM", "TPM", "PARALLEL", "ADMIN", "REQUESTS", "TOKENS",
               "LAST USED", "REVOKED"]  # fmt: skip
    rows = []
    for k in keys:
        used = usage.get(k.id, Usage())
        rows.append([
            k.name, k.id, k.shown + "…", k.tenant, ",".join(k.models) or "*", k.rpm, k.tpm, k.max_parallel,
            "yes" if k.admin else "", used.requests, used.prompt_tokens + used.completion_tokens,
            _when(used.last_used), _when(k.revoked),
        ])  # fmt: skip
    return table(headers, rows)


def _when(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
