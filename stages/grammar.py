"""A regular expression as a character automaton, determinised lazily as text walks it.

Token-by-token grammar checks ask, at every generation step, which tokens may come next. Asking
the regex engine that (a partial match of the text so far plus each token) costs a match per
vocabulary entry per step, and came to two thirds of the tiny profile's captioning time. The
automaton answers from its state instead: a state is computed once per step and its allowed
tokens once per state, with the same answers as `regex.fullmatch(text, partial=True)`.

Supported: literals, character classes (ranges, negation, \\d \\w \\s), `.`, groups, alternation
and bounded or unbounded repetition: the shapes `stages.answer.answer_regex` writes. Anchors,
backreferences and lookarounds raise ValueError.
"""

from __future__ import annotations

import re._constants as sre
import re._parser as sre_parse
from collections.abc import Callable

CATEGORIES = {
    sre.CATEGORY_DIGIT: str.isdecimal,
    sre.CATEGORY_NOT_DIGIT: lambda ch: not ch.isdecimal(),
    sre.CATEGORY_WORD: lambda ch: ch.isalnum() or ch == "_",
    sre.CATEGORY_NOT_WORD: lambda ch: not (ch.isalnum() or ch == "_"),
    sre.CATEGORY_SPACE: str.isspace,
    sre.CATEGORY_NOT_SPACE: lambda ch: not ch.isspace(),
}


def _class_test(items: list) -> Callable[[str], bool]:
    chars, ranges, categories, negate = set(), [], [], False
    for op, arg in items:
        if op is sre.LITERAL:
            chars.add(chr(arg))
        elif op is sre.RANGE:
            ranges.append((chr(arg[0]), chr(arg[1])))
        elif op is sre.NEGATE:
            negate = True
        elif op is sre.CATEGORY and arg in CATEGORIES:
            categories.append(CATEGORIES[arg])
        else:
            raise ValueError(f"unsupported in a character class: {op} {arg}")

    def test(ch: str) -> bool:
        inside = ch in chars or any(a <= ch <= b for a, b in ranges) or any(c(ch) for c in categories)
        return inside != negate

    return test


class CharAutomaton:
    """Thompson automaton of a pattern; a state is the frozenset of its character nodes (plus
    the accepting node), and the empty set is dead: no continuation can match any more."""

    def __init__(self, pattern: str):
        parsed = sre_parse.parse(pattern)
        if parsed.state.flags & ~sre.SRE_FLAG_UNICODE:
            raise ValueError(f"unsupported regex flags in {pattern!r}")
        self.tests: list[Callable[[str], bool] | None] = []  # None: a branching (epsilon) node
        self.nexts: list[list[int]] = []
        self._tests_by_key: dict[tuple, Callable[[str], bool]] = {}
        self.accept = self._node(None)
        self.start = self._closure([self._build(list(parsed), self.accept)])
        self._steps: dict[tuple[frozenset, str], frozenset] = {}

    def _node(self, test, nexts=()) -> int:
        self.tests.append(test)
        self.nexts.append(list(nexts))
        return len(self.tests) - 1

    def _build(self, items: list, then: int) -> int:
        """The node that matches `items` and continues at `then` (built back to front)."""
        for op, arg in reversed(items):
            then = self._build_one(op, arg, then)
        return then

    def _test(self, op, arg) -> Callable[[str], bool]:
        """One test per distinct construct, shared by its copies (a repeated class is one test)."""
        key = (op, repr(arg))
        if key not in self._tests_by_key:
            if op is sre.LITERAL:
                self._tests_by_key[key] = lambda ch, c=chr(arg): ch == c
            elif op is sre.NOT_LITERAL:
                self._tests_by_key[key] = lambda ch, c=chr(arg): ch != c
            elif op is sre.ANY:
                self._tests_by_key[key] = lambda ch: ch != "\n"
            else:
                self._tests_by_key[key] = _class_test(arg)
        return self._tests_by_key[key]

    def _build_one(self, op, arg, then: int) -> int:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            return self._node(self._test(op, arg), [then])
        if op is sre.SUBPATTERN:
            if arg[1] or arg[2]:
                raise ValueError("unsupported: flags inside a group")
            return self._build(list(arg[3]), then)
        if op is sre.BRANCH:
            return self._node(None, [self._build(list(alt), then) for alt in arg[1]])
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", None)):
            low, high, item = arg
            if high == sre.MAXREPEAT:
                loop = self._node(None)
                self.nexts[loop] = [self._build(list(item), loop), then]
                then = loop
            else:
                after = then
                for _ in range(high - low):  # optional copies, each may end the repetition: x(x(x)?)?
                    then = self._node(None, [self._build(list(item), then), after])
            for _ in range(low):
                then = self._build(list(item), then)
            return then
        raise ValueError(f"unsupported regex construct: {op}")

    def _closure(self, nodes) -> frozenset:
        seen, todo = set(), list(nodes)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                if self.tests[node] is None:
                    todo.extend(self.nexts[node])
        return frozenset(n for n in seen if self.tests[n] is not None or n == self.accept)

    def step(self, state: frozenset, ch: str) -> frozenset:
        key = (state, ch)
        if key not in self._steps:
            nexts = [nxt for n in state if n != self.accept and self.tests[n](ch) for nxt in self.nexts[n]]
            self._steps[key] = self._closure(nexts)
        return self._steps[key]

    def walk(self, state: frozenset, text: str) -> frozenset:
        for ch in text:
            if not state:
                break
            state = self.step(state, ch)
        return state

    def accepts(self, state: frozenset) -> bool:
        return self.accept in state

    def allowed(self, state: frozenset, pieces: Pieces) -> list[int]:
        """The tokens whose text keeps `state` alive (a one-character token: some node of the
        state takes its character)."""
        ids = {i for n in state if n != self.accept for i in pieces.matching(self.tests[n])}
        ids.update(i for i, piece in pieces.longer if self.walk(state, piece))
        return sorted(ids)


class Pieces:
    """A vocabulary's token texts: one-character tokens by character, longer ones listed."""

    def __init__(self, pieces: list[tuple[int, str]]):
        self.single: dict[str, list[int]] = {}
        self.longer: list[tuple[int, str]] = []
        for i, piece in pieces:
            if len(piece) == 1:
                self.single.setdefault(piece, []).append(i)
            elif piece:
                self.longer.append((i, piece))
        self._matching: dict[Callable, list[int]] = {}

    def matching(self, test: Callable[[str], bool]) -> list[int]:
        """The one-character tokens a node's test takes, worked out once per test."""
        if test not in self._matching:
            self._matching[test] = [i for ch, ids in self.single.items() if test(ch) for i in ids]
        return self._matching[test]
