"""stages.grammar: the character automaton answers as the regex engine does, on the answer
grammar and on every construct it claims to support."""

from __future__ import annotations

import random

import pytest
import regex

from vidcurate.stages.answer import answer_regex
from vidcurate.stages.grammar import CharAutomaton, Pieces

VALID = '{"caption": "A dog runs.", "events": [{"start_s": 0.00, "end_s": 1.25, "text": "runs"}, {"start_s": 1.25, "end_s": 5.00, "text": "sits (still)"}]}'
ALPHABET = list('{}[]":, .0123456789abcstxyz()-\n_') + ["é"]


def _texts(seed: int, valid: str, count: int) -> list[str]:
    """Every prefix of a valid string, and as many random edits of its prefixes."""
    rng = random.Random(seed)
    texts = [valid[:k] for k in range(len(valid) + 1)]
    for _ in range(count):
        text = list(valid[: rng.randrange(len(valid) + 1)])
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(text) + 1)
            if text and rng.random() < 0.5:
                text[min(at, len(text) - 1)] = rng.choice(ALPHABET)
            else:
                text.insert(at, rng.choice(ALPHABET))
        texts.append("".join(text))
    return texts


def _agrees(pattern: str, texts: list[str]) -> None:
    automaton, compiled = CharAutomaton(pattern), regex.compile(pattern)
    for text in texts:
        state = automaton.walk(automaton.start, text)
        assert bool(state) == bool(compiled.fullmatch(text, partial=True)), (pattern, text)
        assert automaton.accepts(state) == bool(compiled.fullmatch(text)), (pattern, text)


def test_answer_grammar_walks_as_the_regex_engine_matches():
    _agrees(answer_regex([0.0, 1.25, 2.5], 5.0, max_events=2, max_chars=12), _texts(0, VALID, 3000))


@pytest.mark.parametrize(
    "pattern, valid",
    [
        (r"a{2,4}b?(cd|ce)+\d\w\s.", "aaabcdce7_ x"),
        (r"[^ab]{0,3}x*[a-c-]", "zzxxx-"),
        (r"(ab){1,3}?(a|ab)(c|bcd)[A-Z]{2}", "abababcdQR"),
    ],
)
def test_constructs_walk_as_the_regex_engine_matches(pattern, valid):
    _agrees(pattern, _texts(1, valid, 500))


def test_allowed_tokens_are_those_that_keep_a_match_possible():
    pieces = [(0, "a"), (1, "b"), (2, "ab"), (3, "ba"), (4, "c"), (5, "")]
    automaton = CharAutomaton(r"a(b|c)a?")
    for text in ["", "a", "ab", "aba", "x"]:
        state = automaton.walk(automaton.start, text)
        expected = [i for i, p in pieces if p and regex.fullmatch(r"a(b|c)a?", text + p, partial=True)]
        assert automaton.allowed(state, Pieces(pieces)) == expected, text


@pytest.mark.parametrize("pattern", [r"^a", r"(a)\1", r"a(?=b)", r"(?i)a"])
def test_unsupported_constructs_raise(pattern):
    with pytest.raises(ValueError):
        CharAutomaton(pattern)
