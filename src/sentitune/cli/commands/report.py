"""`sentitune report RESULTS [--open]`: writes report.md and report.html, prints their paths and the
tradeoffs."""

from __future__ import annotations

import argparse
import webbrowser

from sentitune.reporting.render import write_report


def run(args: argparse.Namespace) -> int:
    md_path, html_path, context = write_report(args.results)
    print(f"wrote {md_path} and {html_path}")
    print(f"Tradeoffs (against {context['reference']}):")
    for statement in context["statements"]:
        print(f"  - {statement}")
    if args.open:
        uri = html_path.resolve().as_uri()
        if not webbrowser.open(uri):
            print(f"no browser available here; open {uri}")
    return 0
