"""`konsilium models stage|promote|rollback ID` and `konsilium reload`: the admin API's update
steps from the terminal, against a running server; each prints its report.

`KONSILIUM_API_KEY` (an admin key, once keys exist) is sent as the bearer token. Exit status: 0
when the step happened, 1 when a candidate was refused or the server refused the
step (its error printed), 2 when the server cannot be reached."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from entrypoints.commands import table

DEFAULT_URL = "http://127.0.0.1:8400"
STEP_TIMEOUT_S = 1800  # a stage loads a model and answers every control prompt twice


def add_parsers(models: Any) -> None:
    """`models stage|promote|rollback` (under `konsilium models`)."""
    for action, text in (
        ("stage", "load a new revision beside the active one and check it on the control prompts"),
        ("promote", "switch the model to its staged revision and write it into the manifest"),
        ("rollback", "return the model to the revision before the last promote"),
    ):
        parser = models.add_parser(action, help=text)
        parser.add_argument("model")
        parser.add_argument("--url", default=DEFAULT_URL, help="the server (default: %(default)s)")
        if action == "stage":
            parser.add_argument("--path", help="the new GGUF (or vLLM directory); default: the manifest's candidate")
            parser.add_argument("--revision", default="", help="its name (default: from its checksum)")
            parser.add_argument("--sha256", help="its expected checksum (default: computed now)")


def reload_parser(commands: Any) -> None:
    parser = commands.add_parser("reload", help="make a running server read its config and manifests again")
    parser.add_argument("--url", default=DEFAULT_URL, help="the server (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.command == "reload":
        return _call(f"{args.url.rstrip('/')}/admin/reload", None, _print_reload)
    body = None
    if args.action == "stage" and args.path:
        body = {"path": args.path, "revision": args.revision}
        if args.sha256:
            body["checksum_sha256"] = args.sha256
    return _call(f"{args.url.rstrip('/')}/admin/models/{args.model}/{args.action}", body, _print_report)


def _call(url: str, body: dict[str, Any] | None, show: Callable[[dict[str, Any]], int]) -> int:
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if key := os.environ.get("KONSILIUM_API_KEY"):  # an admin key, once keys exist
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=STEP_TIMEOUT_S) as response:
            return show(json.load(response))
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        print(f"konsilium: {exc.code}: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"konsilium: cannot reach {url}: {exc}", file=sys.stderr)
        return 2


def _print_reload(report: dict[str, Any]) -> int:
    models = report["models"]
    print(f"reloaded {report['config']}")
    for change in ("added", "removed", "changed", "updated"):
        if models[change]:
            print(f"  {change}: {', '.join(models[change])}")
    return 0


def _print_report(report: dict[str, Any]) -> int:
    print(f"{report['step']} {report['model']}: {report['outcome']} (serving revision {report['revision']})")
    revisions = [(name, report[name]) for name in ("active", "candidate") if report.get(name)]
    if revisions:
        rows = [
            [
                name,
                r["revision"],
                f"{r['passed']}/{r['total']}",
                f"{r['score']:.2f}",
                r["ttft_ms_p50"],
                r["tokens_per_s"],
            ]
            for name, r in revisions
        ]
        print(table(["", "REVISION", "PASSED", "SCORE", "TTFT MS", "TOKENS/S"], rows))
        for name, r in revisions:
            for result in r["results"]:
                if not result["passed"]:
                    print(f"  {name} {result['name']}: {result['why']} (answered {result['answer']!r})")
            if r.get("error"):
                print(f"  {name}: {r['error']}")
    for reason in report.get("reasons", []):
        print(f"refused: {reason}")
    if report.get("manifest"):
        print(f"wrote {report['manifest']}")
    return 1 if report["outcome"] == "refused" else 0
