"""Shell command lines, split the way a POSIX shell would split them, for the permission
policy. Pure: no I/O.

`parse(text)` gives the simple commands of a command line (`pytest -q && git add .` is two)
and says whether the line is *plain*: only words, quotes, the separators `;` `&&` `||` `|`
`&` and newlines, and redirections to literal files. Anything the policy cannot see through
(command substitution, process substitution, grouping, here-documents, a command word that
is an expansion) makes it not plain, and an allow rule never applies to a line that is not
plain. The commands inside substitutions are still listed, so that a deny rule still sees
`echo $(git push)`.

Words keep whether they are literal: `$HOME` or `"$X"` is an expansion the shell fills in at
run time, so no pattern but `*` matches it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_REDIRECT_CHARS = "<>"
_SPACE = " \t"
_ENDS_WORD = " \t\n<>()&|;"
_ORDINARY = re.compile(r"[^ \t\n<>()&|;\\'\"$`*?\[]+")  # characters that stand for themselves


class Word(NamedTuple):
    text: str
    literal: bool  # no expansion, substitution or unquoted glob the shell would fill in


class Command(NamedTuple):
    words: tuple[Word, ...]
    targets: tuple[Word, ...]  # the files its redirections name


class Line(NamedTuple):
    commands: tuple[Command, ...]
    plain: bool  # nothing the policy cannot see through


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.plain = True
        self.commands: list[Command] = []

    # -- the line ---------------------------------------------------------------------

    def line(self, stop: str = "") -> None:
        words: list[Word] = []
        targets: list[Word] = []

        def flush() -> None:
            if words or targets:
                if words and not words[0].literal:
                    self.plain = False  # the command itself is an expansion
                self.commands.append(Command(tuple(words), tuple(targets)))
            words.clear()
            targets.clear()

        while self.i < len(self.s):
            c = self.s[self.i]
            if stop and c == stop:
                self.i += 1
                break
            if c in _SPACE:
                self.i += 1
            elif c == "\\" and self.s.startswith("\\\n", self.i):
                self.i += 2  # a line continuation
            elif c == "\n":
                self.i += 1
                flush()
            elif c == "#" :
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            elif c in "&|;":
                self.i += 2 if self.s[self.i : self.i + 2] in ("&&", "||", "|&") else 1
                flush()
            elif c in "(){}" and (c in "()" or self._word_alone()):
                # a subshell or a group: what runs inside is listed, but it is not plain
                self.plain = False
                self.i += 1
                flush()
            elif c in _REDIRECT_CHARS or (c.isdigit() and self._redirect_after_digits()):
                target = self.redirect()
                if target is not None:
                    targets.append(target)
            else:
                word = self.word()
                if word is not None:
                    words.append(word)
        flush()

    def _word_alone(self) -> bool:
        """`{` and `}` group commands only as words of their own."""
        after = self.s[self.i + 1 : self.i + 2]
        return after == "" or after in _SPACE + "\n;"

    def _redirect_after_digits(self) -> bool:
        j = self.i
        while j < len(self.s) and self.s[j].isdigit():
            j += 1
        return j < len(self.s) and self.s[j] in _REDIRECT_CHARS

    def redirect(self) -> Word | None:
        while self.s[self.i].isdigit():
            self.i += 1
        if self.s.startswith("<<", self.i):
            self.plain = False  # a here-document or here-string: its text is not a file
            self.i += 3 if self.s.startswith("<<<", self.i) else 2
            self.word()
            return None
        if self.s.startswith(("<(", ">("), self.i):
            self.plain = False  # process substitution
            self.i += 2
            self.line(stop=")")
            return None
        self.i += 1
        if self.i < len(self.s) and self.s[self.i] in ">&|":
            self.i += 1  # >> >& >| &>
        while self.i < len(self.s) and self.s[self.i] in _SPACE:
            self.i += 1
        target = self.word()
        if target is None:
            return None
        if target.text.isdigit() or target.text == "-":
            return None  # 2>&1: a descriptor, not a file
        if not target.literal:
            self.plain = False
        return target

    # -- words ------------------------------------------------------------------------

    def word(self) -> Word | None:
        text: list[str] = []
        literal = True
        started = False
        while self.i < len(self.s):
            run = _ORDINARY.match(self.s, self.i)
            if run:
                text.append(run.group())
                self.i = run.end()
                started = True
                continue
            c = self.s[self.i]
            if c in _ENDS_WORD:
                break
            started = True
            if c == "\\":
                if self.s.startswith("\\\n", self.i):
                    self.i += 2
                    continue
                text.append(self.s[self.i + 1 : self.i + 2])
                self.i += 2
            elif c == "'":
                end = self.s.find("'", self.i + 1)
                end = len(self.s) if end < 0 else end
                text.append(self.s[self.i + 1 : end])
                self.i = end + 1
            elif c == '"':
                literal = self.double_quoted(text) and literal
            elif c == "$":
                literal = False
                self.expansion(text)
            elif c == "`":
                literal = False
                self.backquoted()
            else:
                if c in "*?[":
                    literal = False  # the shell would expand it against the files there
                text.append(c)
                self.i += 1
        return Word("".join(text), literal) if started else None

    def double_quoted(self, text: list[str]) -> bool:
        self.i += 1
        literal = True
        while self.i < len(self.s) and self.s[self.i] != '"':
            c = self.s[self.i]
            if c == "\\" and self.s[self.i + 1 : self.i + 2] in ('"', "\\", "$", "`", "\n"):
                text.append(self.s[self.i + 1])
                self.i += 2
            elif c == "$":
                literal = False
                self.expansion(text)
            elif c == "`":
                literal = False
                self.backquoted()
            else:
                text.append(c)
                self.i += 1
        self.i += 1
        return literal

    def backquoted(self) -> None:
        """`...`: a command substitution, listed, and the line is not plain."""
        self.plain = False
        end = self.s.find("`", self.i + 1)
        end = len(self.s) if end < 0 else end
        self.commands_of(self.s[self.i + 1 : end])
        self.i = end + 1

    def expansion(self, text: list[str]) -> None:
        """`$(...)` (a command: listed, not plain), `$((...))`, `${...}`, `$NAME`."""
        if self.s.startswith("$((", self.i):
            end = self.s.find("))", self.i)
            end = len(self.s) if end < 0 else end
            text.append(self.s[self.i : end + 2])
            self.i = end + 2
        elif self.s.startswith("$(", self.i):
            self.plain = False
            self.i += 2
            self.line(stop=")")
        elif self.s.startswith("${", self.i):
            end = self.s.find("}", self.i)
            end = len(self.s) if end < 0 else end
            text.append(self.s[self.i : end + 1])
            self.i = end + 1
        else:
            j = self.i + 1
            while j < len(self.s) and (self.s[j].isalnum() or self.s[j] == "_"):
                j += 1
            if j == self.i + 1 and j < len(self.s) and self.s[j] in "@*#?$!-0123456789":
                j += 1
            text.append(self.s[self.i : j])
            self.i = j

    def commands_of(self, text: str) -> None:
        inner = _Parser(text)
        inner.line()
        self.commands += inner.commands


def parse(text: str) -> Line:
    """The simple commands of a shell command line, and whether it is plain."""
    parser = _Parser(text)
    parser.line()
    return Line(tuple(parser.commands), parser.plain)


def pattern(text: str) -> tuple[str, ...]:
    """The words of a rule's command pattern (`git push *`); ValueError if it is more than one
    simple command. Claude Code's older `npm run test:*` means `npm run test *`."""
    if text.endswith(":*"):
        text = text[:-2] + " *"
    parser = _Parser(text)
    parser.line()
    if len(parser.commands) != 1 or parser.commands[0].targets or not parser.plain:
        raise ValueError(f"{text!r} is not one command: a pattern is words and * (like \"pytest *\")")
    return tuple(w.text for w in parser.commands[0].words)
