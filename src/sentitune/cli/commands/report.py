"""`sentitune report RESULTS [--open]`: writes report.md and report.html, prints their paths and the
tradeoffs."""

from __future__ import annotations

import argparse
import os
import webbrowser

from sentitune.errors import ConfigError
from sentitune.reporting.render import write_report


def run(args: argparse.Namespace) -> int:
    results = args.results or args.results_option
    if results is None:
        raise ConfigError("no comparison folder: give it as the first argument or with --output-dir")
    if args.results_option and os.path.normpath(args.results_option) != os.path.normpath(results):
        raise ConfigError(f"two comparison folders: {results!r} and --output-dir {args.results_option!r}; give one")
    md_path, html_path, context = write_report(results)
    print(f"wrote {md_path} and {html_path}")
    print(f"Tradeoffs (against {', '.join(context['references'])}):")
    for statement in context["statements"]:
        print(f"  - {statement}")
    if args.open:
        uri = html_path.resolve().as_uri()
        if not webbrowser.open(uri):
            print(f"no browser available here; open {uri}")
    return 0
