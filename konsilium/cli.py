"""`konsilium serve [--config FILE] [--host H] [--port P]` and `konsilium config-schema`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import msgspec

from konsilium.config import Config, config_json_schema, default_config, load_config
from konsilium.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="konsilium", description="Local OpenAI-compatible LLM gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the OpenAI API")
    serve.add_argument("--config", type=Path, help="YAML config (default: SmolLM2, no file needed)")
    serve.add_argument("--host", help="override the config's host")
    serve.add_argument("--port", type=int, help="override the config's port")
    commands.add_parser("config-schema", help="print the JSON schema of the config file")
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else default_config()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return msgspec.structs.replace(config, **overrides)


def serve(config: Config) -> None:
    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config-schema":
        print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
        return 0
    try:
        config = _config(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"konsilium: {problem}", file=sys.stderr)
        return 2
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
