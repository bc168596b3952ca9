"""Writes src/sentitune/suites/negation.tsv: sentitune's negation and contrast suite, an out-of-domain
eval set that `sentitune compare` scores every run on (eval set `negation`).

Every sentence comes from a template and a word list, and every template is a minimal pair: two
sentences that differ in a few words (a negation, the conjunction after a contrast, an intensifier
swapped for another adjective) and carry opposite labels. The label of each sentence is written in
its template, so a wrong label is a wrong template, visible in one line below.

Choices that keep the labels defensible:
  * Negated adjectives are mild ones. "not good" is negative and "not boring" is positive, but "not
    excellent" or "not terrible" are lukewarm, so extremes are never negated.
  * A contrast ends in an explicit verdict on the whole film ("..., but the film as a whole was a
    chore"); two aspects compared with "but" and nothing else ("the acting was superb but the plot
    was dull") are left out, since readers disagree on which clause wins.
  * Double negations are the idiomatic ones whose reading is settled ("I can't say I didn't enjoy it",
    "it never fails to amuse me", "I didn't dislike it").

Columns: sentence, label (negative/positive), family, template, pair (sentences sharing a pair id
form one minimal pair). The output is deterministic; tests/test_suites.py checks that the shipped
file is exactly what this script writes.

    python scripts/make_negation_suite.py          # rewrites the shipped file
    python scripts/make_negation_suite.py --check  # exit 1 if the shipped file differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


OUTPUT = Path(__file__).resolve().parents[1] / "src" / "sentitune" / "suites" / "negation.tsv"
COLUMNS = ("sentence", "label", "family", "template", "pair")

# Mild adjectives: their negation flips the sentiment without landing on "merely lukewarm".
POSITIVE = ("good", "enjoyable", "funny", "entertaining", "interesting", "clever", "charming")
NEGATIVE = ("bad", "boring", "dull", "tedious", "disappointing", "predictable", "forgettable")
# Strong aspect adjectives for contrasts (never negated).
ASPECT_POSITIVE = ("superb", "excellent", "wonderful", "brilliant")
ASPECT_NEGATIVE = ("weak", "clumsy", "awful", "lifeless")
ASPECTS = ("acting", "plot", "script", "soundtrack", "dialogue", "cinematography")
OBJECTS = ("it", "this film", "the movie", "the sequel")
FLIP = {"positive": "negative", "negative": "positive"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _polar(adjective: str) -> str:
    return "positive" if adjective in POSITIVE else "negative"


def rows() -> list[tuple[str, str, str, str, str]]:
    """(sentence, label, family, template, pair id) for the whole suite, in a fixed order."""
    out: list[tuple[str, str, str, str, str]] = []

    def pair(family: str, template: str, first: tuple[str, str], second: tuple[str, str]) -> None:
        # Each pair: two sentences with opposite labels (checked here, so a bad template cannot ship).
        assert first[1] == FLIP[second[1]], (template, first, second)
        pair_id = f"{family}-{len({r[4] for r in out if r[2] == family}) + 1:03d}"
        for sentence, label in (first, second):
            out.append((sentence, label, family, template, pair_id))

    # Negation: "X is ADJ" vs "X is not ADJ"; negating a mild adjective flips its polarity.
    negations = (
        ("The movie was {adjective}.", "The movie was not {adjective}."),
        ("This film is {adjective}.", "This film isn't {adjective}."),
        ("I found the story {adjective}.", "I didn't find the story {adjective}."),
        ("It is {article} {adjective} film.", "It is not {article} {adjective} film."),
        ("The performances were {adjective}.", "The performances were never {adjective}."),
    )
    for base, negated in negations:
        for adjective in POSITIVE + NEGATIVE:
            label = _polar(adjective)
            fill = {"adjective": adjective, "article": _article(adjective)}
            pair("negation", negated, (base.format(**fill), label), (negated.format(**fill), FLIP[label]))

    # Expectation: "I expected to love it, but I didn't" (negative) vs "..., and I did" (positive).
    for verb, label in (("love", "positive"), ("like", "positive"), ("enjoy", "positive"), ("hate", "negative")):
        for thing in OBJECTS:
            base = f"I expected to {verb} {thing}"
            pair(
                "expectation",
                "I expected to {verb} {object}, but I didn't.",
                (f"{base}, and I did.", label),
                (f"{base}, but I didn't.", FLIP[label]),
            )
    for adjective in POSITIVE + NEGATIVE:
        label = _polar(adjective)
        pair(
            "expectation",
            "I thought it would be {adjective}, but it wasn't.",
            (f"I thought it would be {adjective}, and it was.", label),
            (f"I thought it would be {adjective}, but it wasn't.", FLIP[label]),
        )

    # Contrast: the clause after "but"/the main clause after "although" gives the verdict on the film.
    for aspect in ASPECTS:
        for good, bad in zip(ASPECT_POSITIVE, ASPECT_NEGATIVE):
            pair(
                "contrast",
                "The {aspect} was {adjective}, but the film as a whole was {verdict}.",
                (f"The {aspect} was {good}, but the film as a whole was a chore.", "negative"),
                (f"The {aspect} was {bad}, but the film as a whole was a delight.", "positive"),
            )
            pair(
                "contrast",
                "Although the {aspect} was {adjective}, I {loved/hated} the film.",
                (f"Although the {aspect} was {bad}, I loved the film.", "positive"),
                (f"Although the {aspect} was {good}, I hated the film.", "negative"),
            )

    # Intensifiers: the same intensifier before opposite adjectives; a negated intensifier ("not very
    # good") still negates. Only positive adjectives are negated here: "not very bad" means "somewhat bad".
    for intensifier in ("very", "really", "truly", "incredibly", "remarkably"):
        for good, bad in zip(POSITIVE, NEGATIVE):
            pair(
                "intensifier",
                "The movie was {intensifier} {adjective}.",
                (f"The movie was {intensifier} {good}.", "positive"),
                (f"The movie was {intensifier} {bad}.", "negative"),
            )
    for affirmed, negated in (("very", "not very"), ("particularly", "not particularly"), ("really", "not all that")):
        for good in POSITIVE:
            pair(
                "intensifier",
                "The film was not {intensifier} {adjective}.",
                (f"The film was {affirmed} {good}.", "positive"),
                (f"The film was {negated} {good}.", "negative"),
            )

    # Double negation: two negations that cancel, against the single negation they contain.
    for verb, past in (("enjoy", "enjoyed"), ("like", "liked")):
        for thing in OBJECTS:
            pair(
                "double negation",
                "I can't say I didn't {verb} {object}.",
                (f"I can't say I didn't {verb} {thing}.", "positive"),
                (f"I can't say I {past} {thing}.", "negative"),
            )
    for subject in ("This film", "The movie"):
        for verb in ("entertain", "amuse", "delight", "move", "impress"):
            pair(
                "double negation",
                "{subject} never fails to {verb} me.",
                (f"{subject} never fails to {verb} me.", "positive"),
                (f"{subject} fails to {verb} me.", "negative"),
            )
    for thing in OBJECTS:
        pair(
            "double negation",
            "I didn't dislike {object}.",
            (f"I didn't dislike {thing}.", "positive"),
            (f"I didn't like {thing}.", "negative"),
        )
    for good in POSITIVE:
        pair(
            "double negation",
            "Nobody could say the film was not {adjective}.",
            (f"Nobody could say the film was not {good}.", "positive"),
            (f"Nobody could say the film was {good}.", "negative"),
        )
    return out


def render() -> str:
    lines = ["\t".join(COLUMNS)]
    for row in rows():
        assert not any("\t" in cell or "\n" in cell for cell in row), row
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped file is not up to date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT}: out of date; run python scripts/make_negation_suite.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"{OUTPUT}: {text.count(chr(10)) - 1} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
