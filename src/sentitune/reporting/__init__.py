"""Reports: figure functions (`plots`) and Markdown/HTML rendering of a comparison folder (`render`).

`render` is imported on first use, so `analysis` can use `plots` without loading jinja2 and the
report code.

Example:
    >>> from sentitune.reporting import build_report
    >>> md_path, html_path = build_report("results/sst2")  # doctest: +SKIP
"""

from __future__ import annotations


def build_report(results_dir):
    """See `sentitune.reporting.render.build_report`."""
    from sentitune.reporting.render import build_report as build

    return build(results_dir)


__all__ = ["build_report"]
