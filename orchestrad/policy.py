"""The permission policy: ordered allow / deny / ask rules over a tool and its input, which
the daemon applies to every tool call an agent makes. Pure: no I/O, no clock; the caller
resolves symlinks (`Call.real`) and says where the task works and whose home `~` is.

A rule is an effect, a tool and, for some tools, what it is used on::

    allow Bash(pytest *)            a command and its arguments; * is any words
    deny  Bash(git push *)
    deny  Read(~/.ssh/**)           a path: ~ is the home, ./ or a bare path the task's
    allow Edit(./**)                directory, / the root; ** any depth, * within a name
    allow WebFetch(domain:docs.python.org)
    ask   mcp__github__*            a tool name (globs allowed) on anything

`Read(...)` covers the tools that read files (Read, Glob, Grep, LS, NotebookRead);
`Edit(...)` and `Write(...)` both cover the tools that write them (Edit, MultiEdit, Write,
NotebookEdit). Path rules also see the paths a shell command names: `deny Read(~/.ssh/**)`
denies `cat ~/.ssh/id_rsa` too.

Rules are tried in order and the first that matches decides. The order is: the role's
rules, then config.toml's, then `DEFAULTS`, then what a built-in role allows
(`BUILTIN_ROLE_RULES`): so a user's rules come first, and the defaults' denials hold over
the built-in allowances (`allow Edit(./**)` in a task working in the home does not reach
~/.ssh).
When no rule matches, the policy does not decide and the agent's own rules apply (Claude
Code then asks a person for anything but reads and read-only commands).

Shell commands are matched safely (see `orchestrad.cmdline`): a line is split into its
simple commands, and an allow rule decides only when every one of them is allowed, the line
holds nothing the policy cannot see through (command substitution, grouping, a here-doc),
and every path it names (arguments and redirections) is inside the task's directory. So
`allow Bash(pytest *)` allows `pytest -q tests/` but not `pytest; rm -rf ~`,
`pytest $(rm -rf ~)` or `pytest > ~/.bashrc`. A deny or ask rule is matched loosely: against
every simple command, inside substitutions too, through wrappers (`env`, `sudo`, `nohup`,
`timeout`, `sh -c ...`) and whatever the program's directory (`/usr/bin/git`).

It is long because the rule language, its parser, its index and the matching of every tool's
input (paths, shell lines, URLs) must agree exactly, and are read together when a rule
decides something it should not.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
from typing import Any, Mapping, NamedTuple, Sequence

from orchestrad import cmdline

EFFECTS = ("allow", "deny", "ask")
READERS = frozenset({"Read", "Glob", "Grep", "LS", "NotebookRead"})
WRITERS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})
_FAMILIES = {"Read": READERS, "Edit": WRITERS, "Write": WRITERS}
_PATH_KEYS = ("file_path", "notebook_path", "path")
_WRAPPERS = frozenset({"env", "sudo", "nohup", "nice", "time", "timeout", "command", "exec", "builtin", "xargs", "stdbuf", "ionice", "doas"})
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh"})

# Always in force after the role's and config.toml's rules: secrets are not read, and
# orchestra's own files (its log, the stored task environments, its settings and roles:
# an agent's own rights) are not written, without a rule that says so; a push waits for a
# person. `{state}`, `{config}` and `{runtime}` are the instance's directories (worktrees
# live in {state}/worktrees, and are written).
DEFAULTS: tuple[str, ...] = (
    "deny Read(~/.ssh/**)",
    "deny Edit(~/.ssh/**)",
    "deny Read(~/.gnupg/**)",
    "deny Edit(~/.gnupg/**)",
    "deny Read(~/.aws/**)",
    "deny Read(~/.config/gcloud/**)",
    "deny Read(~/.azure/**)",
    "deny Read(~/.kube/**)",
    "deny Read(~/.docker/config.json)",
    "deny Read(~/.netrc)",
    "deny Read(~/.git-credentials)",
    "deny Read(~/.pypirc)",
    "deny Read(~/.npmrc)",
    "deny Read({state}/env/**)",
    "deny Edit({state}/env/**)",
    "deny Edit({state}/log/**)",
    "deny Edit({state}/snapshots/**)",
    "deny Edit({state}/orchestrad.*)",
    "deny Edit({config}/**)",
    "deny Edit({runtime}/**)",
    "ask Bash(git push *)",
)

# What the built-in roles may do without asking, inside the task's directory: the roles
# that change code edit files, run tests, linters and formatters, and keep git history;
# all read, filter output and look at history. (A path outside the directory still asks.)
_CHECKS = (
    "pytest *", "python -m pytest *", "python3 -m pytest *", "py.test *",
    "python -m unittest *", "python3 -m unittest *", "tox *", "nox *",
    "npm test *", "npm run test *", "npm run lint *", "npm run format *", "npm run build *",
    "yarn test *", "yarn lint *", "pnpm test *", "pnpm lint *", "npx jest *", "npx vitest *",
    "npx eslint *", "npx prettier *", "npx tsc *", "eslint *", "prettier *", "tsc *",
    "go test *", "go vet *", "go build *", "gofmt *", "cargo test *", "cargo check *",
    "cargo clippy *", "cargo fmt *", "cargo build *", "make test *", "make check *", "make lint *",
    "ruff *", "black *", "isort *", "flake8 *", "mypy *", "pyright *", "pylint *",
)
_FILTERS = ("head *", "tail *", "grep *", "wc *", "sort *", "uniq *", "cat *", "ls *", "echo *", "pwd", "true")
_GIT_READ = ("git status *", "git diff *", "git log *", "git show *", "git branch", "git rev-parse *", "git ls-files *", "git blame *")
_GIT_WRITE = ("git add *", "git commit *", "git restore *", "git mv *", "git rm *", "git stash *")
_EDITS = ("allow Edit(./**)",)
BUILTIN_ROLE_RULES: dict[str, tuple[str, ...]] = {
    "implementer": (*_EDITS, *(f"allow Bash({c})" for c in (*_CHECKS, *_FILTERS, *_GIT_READ, *_GIT_WRITE))),
    "tester": (*_EDITS, *(f"allow Bash({c})" for c in (*_CHECKS, *_FILTERS, *_GIT_READ, *_GIT_WRITE))),
    "documenter": (*_EDITS, *(f"allow Bash({c})" for c in (*_FILTERS, *_GIT_READ, *_GIT_WRITE))),
    "devops": (*_EDITS, *(f"allow Bash({c})" for c in (*_CHECKS, *_FILTERS, *_GIT_READ, *_GIT_WRITE))),
    "generalist": (*_EDITS, *(f"allow Bash({c})" for c in (*_CHECKS, *_FILTERS, *_GIT_READ, *_GIT_WRITE))),
    "reviewer": tuple(f"allow Bash({c})" for c in (*_CHECKS, *_FILTERS, *_GIT_READ)),
    "architect": tuple(f"allow Bash({c})" for c in (*_FILTERS, *_GIT_READ)),
}

_RULE = re.compile(r"^\s*(allow|deny|ask)\s+([A-Za-z0-9_*?\[\]-]+)\s*(?:\((.*)\))?\s*$", re.S)


class Rule(NamedTuple):
    effect: str
    tool: str  # a name or a glob of names
    spec: str  # what is inside the parentheses; "" for any use of the tool
    text: str  # as written
    words: tuple[str, ...] = ()  # a Bash pattern
    path: str = ""  # a path pattern, as written (~, ./ and placeholders resolved at match time)
    domain: str = ""  # a WebFetch domain


class Call(NamedTuple):
    tool: str
    input: Mapping[str, Any]
    cwd: str  # the task's directory
    home: str
    real: Mapping[str, str] = {}  # path as the call names it (absolute) -> with symlinks resolved
    places: Mapping[str, str] = {}  # {state}, {config}, {runtime} -> the instance's directories


class Decision(NamedTuple):
    effect: str  # allow | deny | ask
    rule: Rule
    source: str  # "role tester", "config", "defaults", "the built-in tester role"
    index: int  # 1-based, within its source
    reason: str  # a sentence: what matched

    @property
    def by(self) -> str:
        return f"rule {self.index} of {self.source} ({self.rule.text})"


class Source(NamedTuple):
    name: str
    rules: tuple[Rule, ...]


def parse_rule(text: str) -> Rule:
    """A rule from its text; ValueError with a sentence that says how rules are written."""
    m = _RULE.match(text)
    if not m:
        raise ValueError(
            f"{text!r} is not a rule: write EFFECT TOOL or EFFECT TOOL(WHAT), EFFECT being allow, deny or "
            f"ask, like \"allow Bash(pytest *)\", \"deny Read(~/.ssh/**)\", \"allow WebFetch(domain:docs.python.org)\""
        )
    effect, tool, spec = m.group(1), m.group(2), (m.group(3) or "").strip()
    if m.group(3) is not None and not spec:
        raise ValueError(f"{text!r}: the parentheses are empty; leave them out to match any use of {tool}")
    if not spec:
        return Rule(effect, tool, "", text.strip())
    if tool == "Bash":
        try:
            return Rule(effect, tool, spec, text.strip(), words=cmdline.pattern(spec))
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    if tool in _FAMILIES:
        return Rule(effect, tool, spec, text.strip(), path=spec)
    if tool == "WebFetch":
        if not spec.startswith("domain:") or not spec[len("domain:"):].strip():
            raise ValueError(f"{text!r}: WebFetch rules name a domain, like WebFetch(domain:docs.python.org)")
        return Rule(effect, tool, spec, text.strip(), domain=spec[len("domain:"):].strip().lower())
    raise ValueError(
        f"{text!r}: only Bash, Read, Edit, Write and WebFetch rules take an argument; "
        f"write \"{effect} {tool}\" to match any use of {tool}"
    )


@functools.lru_cache(maxsize=256)
def compile_rules(texts: tuple[str, ...]) -> tuple[Rule, ...]:
    return tuple(parse_rule(t) for t in texts)


def check_rules(texts: object) -> str | None:
    """None when `texts` is a list of valid rules, else a sentence saying what is wrong."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return 'policy must be a list of rules, like ["allow Bash(pytest *)", "deny Read(~/.ssh/**)"]'
    try:
        compile_rules(tuple(texts))
    except ValueError as exc:
        return str(exc)
    return None


class Entry(NamedTuple):
    position: int  # in the whole ordered list
    source: str
    index: int  # 1-based, within its source
    rule: Rule


class Policy:
    """The rules that apply to one role, compiled for one question: which rule decides a
    call. Rules are indexed by the tool they name and, for commands, by their first word, so
    a decision tries only the rules that could match, still in order."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(s for s in sources if s.rules)
        ranked = [(s.name, i, r) for s in self.sources for i, r in enumerate(s.rules, 1)]
        self.entries = [Entry(n, name, i, r) for n, (name, i, r) in enumerate(ranked)]
        self.size = len(self.entries)
        self._tools: dict[str, list[Entry]] = {}
        self._commands: dict[str, list[Entry]] = {}  # Bash rules by their first word
        self._any_command: list[Entry] = []  # Bash rules for any command, or with a glob first word
        self._path_denials = [e for e in self.entries if e.rule.path and e.rule.effect != "allow"]  # they see commands' paths
        self._denials: dict[tuple, re.Pattern[str] | None] = {}  # per place: those rules as one pattern
        for e in self.entries:
            r = e.rule
            if r.words and not any(ch in r.words[0] for ch in "*?["):
                self._commands.setdefault(r.words[0], []).append(e)
            elif r.words or (not r.spec and fnmatch.fnmatchcase("Bash", r.tool)):
                self._any_command.append(e)

    def decide(self, call: Call) -> Decision | None:
        """The first rule that decides `call`, or None when none does."""
        if call.tool == "Bash":
            return self._shell(call)
        entries = self._tools.get(call.tool)
        if entries is None:
            entries = self._tools[call.tool] = [e for e in self.entries if _could_match(e.rule, call.tool)]
        path = _tool_path(call.tool, call.input, call.cwd)
        for e in entries:
            reason = _matches(e.rule, call, path)
            if reason is not None:
                return Decision(e.rule.effect, e.rule, e.source, e.index, reason)
        return None

    def _shell(self, call: Call) -> Decision | None:
        command = call.input.get("command")
        if not isinstance(command, str):
            return None
        line = cmdline.parse(command)
        firsts = [self._first_for_command(part, line.plain, call) for part in line.commands]
        if not firsts:
            return None
        for effect in ("deny", "ask"):
            for d in firsts:
                if d is not None and d.effect == effect:
                    return d
        if all(d is not None and d.effect == "allow" for d in firsts):
            return firsts[0] if len(firsts) == 1 else firsts[0]._replace(reason=f"every command of the line is allowed ({len(firsts)})")
        return None

    def _first_for_command(self, part: cmdline.Command, plain: bool, call: Call) -> Decision | None:
        """The first rule that decides one simple command."""
        paths = _command_paths(part, call.cwd, call.home)
        resolved = [call.real.get(p, p) for p in paths]
        named = list(dict.fromkeys([*paths, *resolved]))
        inside = all(_inside(p, call.cwd) or p == "/dev/null" for p in named)
        loose = _loose_forms(part)
        heads = {part.words[0].text} if part.words else set()
        heads |= {posixpath.basename(f[0].text) for f in loose}
        candidates = [e for head in heads for e in self._commands.get(head, ())]
        if candidates:
            candidates = sorted({e.position: e for e in [*candidates, *self._any_command]}.values())
        else:
            candidates = self._any_command
        path_hit = self._first_path_denial(named, call)
        for e in candidates:
            if path_hit is not None and path_hit[0].position < e.position:
                break
            rule = e.rule
            if rule.words:
                if rule.effect == "allow":
                    if plain and inside and _words_match(rule.words, part.words, strict=True):
                        return Decision("allow", rule, e.source, e.index, f"the command {_show(part)}")
                elif any(_words_match(rule.words, form, strict=False) for form in loose):
                    return Decision(rule.effect, rule, e.source, e.index, f"the command {_show(part)}")
            elif rule.effect != "allow" or (plain and inside):
                return Decision(rule.effect, rule, e.source, e.index, "any use of Bash")
        if path_hit is not None:
            e, p = path_hit
            return Decision(e.rule.effect, e.rule, e.source, e.index, f"the command {_show(part)} names {p}")
        return None

    def _first_path_denial(self, paths: Sequence[str], call: Call) -> tuple[Entry, str] | None:
        """The first deny or ask path rule that one of a command's paths falls under: all
        those rules are one pattern of alternatives, tried in order, per path."""
        if not paths or not self._path_denials:
            return None
        key = (call.cwd, call.home, tuple(call.places.items()))
        pattern = self._denials.get(key)
        if pattern is None:
            if len(self._denials) >= 256:
                self._denials.clear()
            alternatives = "|".join(f"(?P<r{e.position}>{_root_source(e.rule.path, *key)})" for e in self._path_denials)
            pattern = self._denials[key] = re.compile(f"(?:{alternatives})\\Z")
        best: tuple[Entry, str] | None = None
        for p in paths:
            m = pattern.match(p)
            if m is not None:
                e = self.entries[int(m.lastgroup[1:])]  # type: ignore[index]
                if best is None or e.position < best[0].position:
                    best = (e, p)
        return best


def sources(role: str, role_rules: Sequence[str], config_rules: Sequence[str], builtin: bool) -> Policy:
    """The rules that apply to a task of `role`, in the order they are tried. `builtin`: the
    role is a built-in one (not overridden by a file), whose default rules then apply."""
    return _compiled(role, tuple(role_rules), tuple(config_rules), builtin)


@functools.lru_cache(maxsize=64)
def _compiled(role: str, role_rules: tuple[str, ...], config_rules: tuple[str, ...], builtin: bool) -> Policy:
    return Policy([
        Source(f"role {role}", compile_rules(role_rules)),
        Source("config", compile_rules(config_rules)),
        Source("defaults", compile_rules(DEFAULTS)),
        Source(f"the built-in {role} role", compile_rules(BUILTIN_ROLE_RULES.get(role, ()) if builtin else ())),
    ])


def decide(policy: Policy, call: Call) -> Decision | None:
    """The first rule of `policy` that decides `call`, or None when none does."""
    return policy.decide(call)


def paths_of(tool: str, tool_input: Mapping[str, Any], cwd: str, home: str) -> list[str]:
    """The absolute paths (symlinks not resolved) a call names: for the caller to resolve."""
    if tool == "Bash":
        command = tool_input.get("command")
        if not isinstance(command, str):
            return []
        line = cmdline.parse(command)
        return [p for c in line.commands for p in _command_paths(c, cwd, home)]
    path = _tool_path(tool, tool_input, cwd)
    return [path] if path else []


def parse_call(text: str) -> tuple[str, dict[str, Any]]:
    """`Bash(rm -rf /)`, `Read(~/.ssh/id_rsa)`, `WebFetch(https://x)` or `Glob` -> (tool, input),
    for `orchestra policy check`; ValueError when it is not of that shape."""
    m = re.match(r"^\s*([A-Za-z0-9_-]+)\s*(?:\((.*)\))?\s*$", text, re.S)
    if not m:
        raise ValueError(f"{text!r} is not a tool call: write TOOL(WHAT), like 'Bash(git push origin main)' or 'Read(~/.ssh/id_rsa)'")
    tool, arg = m.group(1), m.group(2) or ""
    if tool == "Bash":
        return tool, {"command": arg}
    if tool in ("Glob", "Grep", "LS"):
        return tool, {"path": arg} if arg else {}
    if tool == "NotebookEdit":
        return tool, {"notebook_path": arg}
    if tool in READERS | WRITERS:
        return tool, {"file_path": arg}
    if tool == "WebFetch":
        return tool, {"url": arg}
    return tool, {"input": arg} if arg else {}


# -- matching -----------------------------------------------------------------------------


def _could_match(rule: Rule, tool: str) -> bool:
    """Whether `rule` can ever match a call of `tool` (other than Bash)."""
    if rule.path:
        return tool in _FAMILIES[rule.tool]
    if rule.domain:
        return tool == "WebFetch"
    return not rule.words and fnmatch.fnmatchcase(tool, rule.tool)


def _matches(rule: Rule, call: Call, path: str) -> str | None:
    """Why `rule` matches a call of a tool other than Bash (`path`: the one it names), or None."""
    if rule.path:
        if not path:
            return None
        seen = [path, call.real.get(path, path)]
        hit = [p for p in seen if _path_match(rule, p, call)]
        # An allow must hold for the path and where its symlinks lead; a deny for either.
        if (rule.effect == "allow" and len(hit) == len(seen)) or (rule.effect != "allow" and hit):
            return f"{call.tool} of {hit[-1]}"
        return None
    if rule.domain:
        host = _host(call.input.get("url"))
        if host and (host == rule.domain or host.endswith("." + rule.domain)):
            return f"a fetch from {host}"
        return None
    return f"any use of {call.tool}"


def _words_match(pattern: tuple[str, ...], words: Sequence[cmdline.Word], strict: bool) -> bool:
    """Whether a command's words fit a pattern's. A lone `*` is any number of words; a word
    with * ? [ in it is a glob over one word. Strict (for allow): the command word as
    written, and an expansion matches only `*`. Loose (for deny and ask): any directory of
    the program, and an expansion matches anything."""

    def one(p: str, j: int) -> bool:
        w = words[j]
        if not w.literal:
            return not strict
        text = posixpath.basename(w.text) if j == 0 and not strict else w.text
        if any(ch in p for ch in "*?["):
            return fnmatch.fnmatchcase(text, p)
        return text == p

    def go(i: int, j: int) -> bool:
        while i < len(pattern) and pattern[i] != "*":
            if j >= len(words) or not one(pattern[i], j):
                return False
            i, j = i + 1, j + 1
        if i == len(pattern):
            return j == len(words)
        if i == len(pattern) - 1:
            return True  # a trailing * takes the rest
        return any(go(i + 1, k) for k in range(j, len(words) + 1))

    return go(0, 0)


def _loose_forms(part: cmdline.Command) -> list[tuple[cmdline.Word, ...]]:
    """The command as written and as what it runs through wrappers: `sudo -u x env A=1
    nohup git push` is also `git push`; `sh -c 'git push'` is also `git push`."""
    forms = [part.words]
    words = list(part.words)
    for _ in range(8):
        if words and "=" in words[0].text and not words[0].text.startswith("="):
            while words and "=" in words[0].text and not words[0].text.startswith("="):
                words = words[1:]  # VAR=value before the command
            forms.append(tuple(words))
        if not words:
            break
        head = posixpath.basename(words[0].text)
        if head in _SHELLS:
            inner = [w for w in words[1:] if not w.text.startswith("-")]
            if any(w.text.startswith("-") and "c" in w.text for w in words[1:]) and inner:
                for command in cmdline.parse(inner[0].text).commands:
                    forms += _loose_forms(command)
            break
        if head not in _WRAPPERS:
            break
        words = words[1:]
        while words and (words[0].text.startswith("-") or "=" in words[0].text or (head == "timeout" and words[0].text[:1].isdigit())):
            words = words[1:]
        forms.append(tuple(words))
    return [f for f in forms if f]


def _command_paths(part: cmdline.Command, cwd: str, home: str) -> list[str]:
    """The absolute paths a simple command may name: its redirections' files and its
    arguments (any literal argument but an option may be a file: `cat k`, where k is a
    symlink; an option's value after = too)."""
    out = [_absolute(w.text, cwd, home) for w in part.targets]
    for w in part.words[1:]:
        text = w.text.split("=", 1)[1] if w.text.startswith("-") and "=" in w.text else w.text
        if w.literal and text and not text.startswith("-"):
            out.append(_absolute(text, cwd, home))
    return out


def _tool_path(tool: str, tool_input: Mapping[str, Any], cwd: str) -> str:
    for key in _PATH_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return posixpath.normpath(posixpath.join(cwd, value))
    if tool in ("Glob", "Grep", "LS"):
        pattern = tool_input.get("pattern")
        if tool == "Glob" and isinstance(pattern, str) and pattern.startswith("/"):
            fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            return posixpath.normpath(posixpath.dirname(fixed) if not fixed.endswith("/") else fixed)
        return posixpath.normpath(cwd)
    return ""


def _absolute(path: str, cwd: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return posixpath.normpath(posixpath.join(cwd, path))


def _inside(path: str, directory: str) -> bool:
    directory = posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _path_match(rule: Rule, path: str, call: Call) -> bool:
    return _root_regex(rule.path, call.cwd, call.home, tuple(call.places.items())).match(path) is not None


@functools.lru_cache(maxsize=4096)
def _root_regex(spec: str, cwd: str, home: str, places: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    return re.compile(_root_source(spec, cwd, home, places) + r"\Z")


def _root_source(spec: str, cwd: str, home: str, places: tuple[tuple[str, str], ...]) -> str:
    """A rule's path pattern made absolute, as a regular expression: ~ is the home, a leading // or /
    the root, {state} {config} {runtime} the instance's directories, anything else the
    task's directory. `**` is any depth (`a/**` is a and all below it), `*` any name part,
    `?` one character."""
    for name, value in places:
        spec = spec.replace("{" + name + "}", value.rstrip("/"))
    if spec == "~" or spec.startswith("~/"):
        pattern = home.rstrip("/") + spec[1:]
    elif spec.startswith("//"):
        pattern = spec[1:]
    elif spec.startswith("/"):
        pattern = spec
    else:
        pattern = posixpath.join(cwd.rstrip("/") or "/", spec[2:] if spec.startswith("./") else spec)
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and (i + 3 == len(pattern) or pattern[i + 3] == "/"):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _host(url: object) -> str:
    if not isinstance(url, str):
        return ""
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/]*@)?(\[[^\]]*\]|[^:/?#]*)", url)
    return m.group(1).lower() if m else ""


def _show(part: cmdline.Command) -> str:
    text = " ".join(w.text for w in part.words)
    return repr(text if len(text) <= 80 else text[:77] + "...")
