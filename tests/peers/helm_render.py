#!/usr/bin/env python3
"""Owns: linting and rendering a Helm chart with a real Helm engine, for tests.

The engine is Helm's own Go SDK (v4), loaded in-process through the PyPI
package helm-python-sdk (import name helm_python; pinned in requirements.txt).
No helm binary and no cluster are involved.

    helm_render.py CHART_DIR [--set K=V]... [--set-string K=V]... [--set-json K=JSON]...
                   [-f VALUES.yaml]... [--name RELEASE] [--namespace NS]
                   [--include-crds] [--notes] [--lint-only] [--no-lint] [--no-strict]

Like `helm lint --strict` followed by `helm template`:
  1. lints the chart with the given values (warnings count as errors unless
     --no-strict; info findings such as "icon is recommended" are printed only),
  2. validates the values against values.schema.json,
  3. renders the templates as an install of RELEASE into NS.
Stdout: the manifests as multi-document YAML, each preceded by
`# Source: <template path>` and in template-path order (CRDs first with
--include-crds); with --notes, only the rendered NOTES.txt; with --lint-only,
nothing. Exit 0 on success; 1 with the lint findings or the Helm error on
stderr; 2 for usage errors. Values precedence is Helm's: chart defaults <
-f files (in order) < --set/--set-string/--set-json (in order).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values: maps merge, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Collect(argparse.Action):
    """Keeps --set/--set-string/--set-json/-f in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.sources.append((self.dest, values))


def user_values(sources: list[tuple[str, str]]) -> dict[str, Any]:
    files = [v for kind, v in sources if kind == "values"]
    sets = [(k, v) for k, v in sources if k != "values"]
    values: dict[str, Any] = {}
    for path in files:
        values = merge(values, helm.values_from_yaml(Path(path).read_text()) or {})
    for kind, expr in sets:
        if kind == "set":
            parsed = helm.parse_set_string(expr)
        elif kind == "set_string":
            parsed = helm.parse_set_string_values(expr)
        else:
            parsed = helm.parse_set_json(expr)
        values = merge(values, parsed)
    return values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chart", help="chart directory")
    ap.set_defaults(sources=[])
    for flag, dest in (("--set", "set"), ("--set-string", "set_string"), ("--set-json", "set_json")):
        ap.add_argument(flag, dest=dest, action=Collect, metavar="K=V")
    ap.add_argument("-f", "--values", dest="values", action=Collect, metavar="FILE")
    ap.add_argument("--name", default="flotilla", help="release name (default flotilla)")
    ap.add_argument("--namespace", default="flotilla", help="release namespace (default flotilla)")
    ap.add_argument("--include-crds", action="store_true", help="also print crds/*")
    ap.add_argument("--notes", action="store_true", help="print only the rendered NOTES.txt")
    ap.add_argument("--lint-only", action="store_true", help="lint, print nothing")
    ap.add_argument("--no-lint", action="store_true", help="skip the lint step")
    ap.add_argument("--no-strict", action="store_true", help="lint warnings do not fail")
    args = ap.parse_args()

    try:
        values = user_values(args.sources)
        helm.validate_release_name(args.name)

        if not args.no_lint:
            report = helm.lint(args.chart, values, strict=not args.no_strict, namespace=args.namespace)
            limit = 3 if args.no_strict else 2
            failed = []
            for msg in report.get("messages") or []:
                sev = msg.get("severity", 0)
                line = f"lint {SEVERITY.get(sev, sev)}: {msg.get('path')}: {str(msg.get('error')).strip()}"
                if sev >= limit:
                    failed.append(line)
                else:
                    print(line, file=sys.stderr)
            if not failed and report.get("errors"):
                failed = [f"lint ERROR: {str(e).strip()}" for e in report["errors"]]
            if failed:
                print("helm_render: lint failed", *failed, sep="\n", file=sys.stderr)
                return 1
            if args.lint_only:
                return 0

        with helm.Chart.load(args.chart) as chart:
            chart.validate_schema(values)
            rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
            chart_name = chart.name
            crds = chart.crds if args.include_crds else []
    except helm.HelmError as exc:
        print(f"helm_render: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"helm_render: {exc}", file=sys.stderr)
        return 1

    notes_key = f"{chart_name}/templates/NOTES.txt"
    if args.notes:
        sys.stdout.write(rendered.get(notes_key, ""))
        return 0

    out = []
    for crd in crds:
        out.append(f"---\n# Source: {crd.get('filename') or crd['name']}\n{crd['data'].strip()}\n")
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") or not rendered[path].strip():
            continue
        out.append(f"---\n# Source: {path}\n{rendered[path].strip()}\n")
    sys.stdout.write("".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
