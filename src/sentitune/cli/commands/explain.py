"""`sentitune explain --model RUN "text" [...] [--method ig|occlusion] [--json]`: which words drove each
prediction (explain.explain_texts), as coloured words on a terminal or JSON lines with --json.

Example:
    $ sentitune explain --model runs/sst2-lora "a gorgeous , witty film"
    $ sentitune explain --model exported/sst2-lora-int8 "a dull mess" --json
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.text import Text

from sentitune.cli.options import runtime_kwargs
from sentitune.errors import DataError
from sentitune.explain import METHODS, check_method, explain_texts
from sentitune.inference import Predictor


def run(args: argparse.Namespace) -> int:
    if not args.texts:
        raise DataError("nothing to explain: give the texts as arguments after --model RUN")
    if args.method is not None and args.method not in METHODS:  # before the model loads
        raise DataError(f"--method: {args.method!r} is not one of {', '.join(METHODS)}")
    predictor = Predictor.load(args.model, **runtime_kwargs(args))
    check_method(predictor, args.method)
    rows = explain_texts(predictor, args.texts, args.method)
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    console = Console()
    for row in rows:
        print_explanation(row, console)
    return 0


def highlighted(row: dict) -> Text:
    """The text with each word's background coloured by its attribution: green toward the predicted
    label, red against it, stronger for larger shares of the largest attribution."""
    text, words = row["text"], row["words"]
    scale = max((abs(w["attribution"]) for w in words), default=0.0) or 1.0
    out, cursor = Text(), 0
    for word in sorted(words, key=lambda w: w["start"]):
        out.append(text[cursor : word["start"]])
        share = min(1.0, abs(word["attribution"]) / scale)
        fade = int(255 - 155 * share)
        colour = f"rgb({fade},255,{fade})" if word["attribution"] >= 0 else f"rgb(255,{fade},{fade})"
        out.append(text[word["start"] : word["end"]], style=f"black on {colour}" if share > 0.05 else "")
        cursor = word["end"]
    out.append(text[cursor:])
    return out


def print_explanation(row: dict, console: Console, top: int = 5) -> None:
    """One explanation: the prediction, the coloured text, and the strongest words either way."""
    console.print(
        f"[bold]{row['label']}[/bold] ({100 * row['score']:.1f}%)  method: {row['method']}"
        + (f"  completeness gap {row['convergence_delta']:.2g}" if "convergence_delta" in row else "")
    )
    console.print(highlighted(row))
    ranked = sorted(row["words"], key=lambda w: w["attribution"], reverse=True)
    toward = ", ".join(f"{w['word']} {w['attribution']:+.3g}" for w in ranked[:top] if w["attribution"] > 0)
    against = ", ".join(f"{w['word']} {w['attribution']:+.3g}" for w in ranked[::-1][:top] if w["attribution"] < 0)
    console.print(f"  for {row['target']}: {toward or '-'}")
    console.print(f"  against: {against or '-'}")
