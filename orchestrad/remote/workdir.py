"""A task's working directory carried to a node of a cluster and back.

A task on a remote executor works here in a git worktree of its own (`orchestrad.worktrees`)
and, on its node, in a checkout of the same commit with the same uncommitted changes. What
it leaves there comes back here before its exit is reported, so diff, checks, review and
merge see it as they see a local task's work. Each way travels the same three things: the
commit HEAD is at, the commits the other side may lack (a git bundle), and what is
uncommitted (tracked changes and untracked files, not ignored ones) as a binary patch
against HEAD, read through an index of its own so the checkout's is not touched.

To a node (`outgoing`, then `checkout` there): when the repository has a remote, the bundle
holds only what its remote-tracking refs do not, and the node fetches the rest from that
remote; with none, the bundle holds the whole history. The node keeps a bare mirror per
repository between tasks and gives each attempt a clone sharing its objects. Back (`collect` there,
then `apply` here): the commits since the start and what is left uncommitted. The worktree
here is moved to them only while it is still as it was sent; otherwise they are kept on a
ref and `apply` says where.

An agent's own state kept per working directory (Claude Code's session transcripts) is
carried as a tar: `pack_dir` and `unpack_dir`.

Standard library and git only, nothing else of orchestra: the node's side runs in the
node's Ray actor, shipped by value (see `bridge`); the daemon's side runs it in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile

__all__ = ["WorkError", "apply", "checkout", "collect", "discard", "outgoing", "pack_dir", "top_of", "unpack_dir"]

SAVED_REF = "refs/orchestra/returned"  # where work that could not be put in its worktree is kept


class WorkError(Exception):
    """A working directory could not be carried; the message is written for a person."""


def _git(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> bytes:  # noqa: A002
    done = subprocess.run(["git", *args], capture_output=True, env=env, input=input)
    if done.returncode != 0:
        said = "; ".join(line.strip() for line in (done.stderr or done.stdout).decode(errors="replace").splitlines() if line.strip())
        said = said if len(said) <= 300 else said[:299] + "…"
        raise WorkError(f"git {args[2] if args[0] == '-C' else args[0]} failed: {said}")
    return done.stdout


def _rev(top: str, rev: str) -> str:
    return _git("-C", top, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}").decode().strip()


def top_of(cwd: str) -> str:
    """The top of the git checkout holding `cwd`; WorkError when it is in none."""
    try:
        return _git("-C", cwd, "rev-parse", "--show-toplevel").decode().strip()
    except (WorkError, OSError):
        raise WorkError(
            f"{cwd} is not in a git repository, and a task on a cluster works in a clone of its repository "
            "on a branch of its own: run it with --executor local, or in a repository"
        ) from None


def _uncommitted(top: str) -> bytes:
    """What is uncommitted in the checkout at `top`, as a binary patch against HEAD."""
    with tempfile.TemporaryDirectory(prefix="orchestra-index-") as tmp:
        index = os.path.join(tmp, "index")
        own = os.path.join(top, _git("-C", top, "rev-parse", "--git-path", "index").decode().strip())
        env = {**os.environ, "GIT_INDEX_FILE": index}
        if os.path.exists(own):
            # Its stat cache, so unchanged files are not read again, and its mtime with it:
            # git reads an entry as new as the index file again ("racily clean"), and a copy
            # stamped now would make a change of the same size in that second look clean.
            shutil.copy2(own, index)
        else:
            _git("-C", top, "read-tree", "HEAD", env=env)
        _git("-C", top, "add", "-A", env=env)
        return _git("-C", top, "diff", "--cached", "--binary", "--no-color", "--no-ext-diff", "HEAD", env=env)


def _bundle(top: str, *exclude: str) -> bytes | None:
    """The commits reachable from HEAD and not from `exclude` (rev-list arguments), as a
    bundle whose one ref is HEAD; None when there are none."""
    with tempfile.TemporaryDirectory(prefix="orchestra-bundle-") as tmp:
        path = os.path.join(tmp, "b")
        done = subprocess.run(["git", "-C", top, "bundle", "create", "-q", path, "HEAD", *(["--not", *exclude] if exclude else [])],
                              capture_output=True)
        if done.returncode != 0:
            if b"empty bundle" in done.stderr:
                return None
            raise WorkError(f"git bundle failed: {done.stderr.decode(errors='replace').strip()}")
        with open(path, "rb") as f:
            return f.read()


def digest(patch: bytes) -> str:
    return hashlib.sha256(patch).hexdigest()


# -- the daemon's side ---------------------------------------------------------------------


def outgoing(cwd: str) -> dict:
    """What a node needs to make the checkout `cwd` is in, with its uncommitted changes."""
    top = top_of(cwd)
    try:
        head = _rev(top, "HEAD")
    except WorkError:
        raise WorkError(f"the repository at {top} has no commit yet: commit something first") from None
    try:
        branch = _git("-C", top, "symbolic-ref", "-q", "--short", "HEAD").decode().strip()
    except WorkError:
        branch = ""
    remotes = _git("-C", top, "remote").decode().split()
    remote = "origin" if "origin" in remotes else (remotes[0] if remotes else "")
    url = _git("-C", top, "config", "--get", f"remote.{remote}.url").decode().strip() if remote else ""
    if url and not os.path.isabs(url) and ":" not in url:  # a path relative to the repository
        url = os.path.normpath(os.path.join(top, url))
    tracked = bool(url) and bool(_git("-C", top, "for-each-ref", "--count=1", f"refs/remotes/{remote}").strip())
    identity = {}
    for name in ("user.name", "user.email"):  # who commits there, as here
        with contextlib.suppress(WorkError):
            identity[name] = _git("-C", top, "config", "--get", name).decode().strip()
    common = os.path.realpath(os.path.join(top, _git("-C", top, "rev-parse", "--git-common-dir").decode().strip()))
    return {
        "head": head,
        "branch": branch,
        "subdir": os.path.relpath(os.path.realpath(cwd), os.path.realpath(top)),
        "url": url if tracked else "",
        "remote": remote if tracked else "",
        "mirror": hashlib.sha256((url or f"{socket.gethostname()}:{common}").encode()).hexdigest()[:20],
        "bundle": _bundle(top, f"--remotes={remote}") if tracked else _bundle(top),
        "patch": _uncommitted(top),
        "identity": identity,
    }


def apply(cwd: str, back: dict, name: str) -> str:
    """Put what came back from a node (`collect`) in the checkout `cwd` is in: "" when it
    is there, else where it was kept instead and why. `name` names the ref it is kept on."""
    top = top_of(cwd)
    if back.get("bundle"):
        with tempfile.TemporaryDirectory(prefix="orchestra-bundle-") as tmp:
            path = os.path.join(tmp, "b")
            with open(path, "wb") as f:
                f.write(back["bundle"])
            _git("-C", top, "fetch", "-q", "--no-tags", path, "HEAD")
    here, patch = _rev(top, "HEAD"), back.get("patch", b"")
    now = digest(_uncommitted(top))
    if here == back["head"] and now == digest(patch):
        return ""  # there already (an exit carried back twice, across a restart)
    if here != back["start"] or now != back["sent"]:
        ref = f"{SAVED_REF}/{name}"
        _git("-C", top, "update-ref", ref, back["head"])
        kept = ""
        if patch:
            kept = os.path.join(_git("-C", top, "rev-parse", "--absolute-git-dir").decode().strip(), f"orchestra-{name}.patch")
            with open(kept, "wb") as f:
                f.write(patch)
        return (f"{top} changed while the task ran on its node, so its work was not put there: its commits are on "
                f"{ref}" + (f", and what it left uncommitted in {kept}" if kept else ""))
    _git("-C", top, "reset", "-q", "--hard", back["head"])
    _git("-C", top, "clean", "-q", "-d", "--force")  # what was sent uncommitted: the patch has it again
    if patch:
        _git("-C", top, "apply", "--binary", "--whitespace=nowarn", "-", input=patch)
    return ""


# -- the node's side -----------------------------------------------------------------------

def _place(root: str, key: str) -> tuple[str, str]:
    return os.path.join(root, "mirrors"), os.path.join(root, "work", key)


def checkout(root: str, key: str, work: dict) -> str:
    """Make the checkout `work` (`outgoing`) describes, for attempt `key`, under `root`;
    the directory its task runs in. Calls for one mirror (`checkout`, `discard`) must not
    overlap: the caller holds a lock per mirror."""
    mirrors, dest = _place(root, key)
    mirror = os.path.join(mirrors, f"{work['mirror']}.git")
    where = socket.gethostname()
    for path in (root, mirrors, os.path.dirname(dest)):  # private, whatever the umask
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    if not os.path.isdir(mirror):
        _git("init", "-q", "--bare", mirror)
    if work["url"]:
        try:
            _git("-C", mirror, "fetch", "-q", "--no-tags", "--prune", work["url"], "+refs/heads/*:refs/heads/*")
        except WorkError as exc:
            raise WorkError(f"node {where} could not fetch the task's repository from {work['url']} ({exc}): "
                            "a node fetches from a repository's remote, so give it access") from None
    ref = f"refs/orchestra/in/{key}"
    if work["bundle"]:
        with tempfile.TemporaryDirectory(prefix="orchestra-bundle-") as tmp:
            path = os.path.join(tmp, "b")
            with open(path, "wb") as f:
                f.write(work["bundle"])
            try:
                _git("-C", mirror, "fetch", "-q", "--no-tags", path, f"+HEAD:{ref}")
            except WorkError as exc:
                raise WorkError(f"node {where} lacks commits the task's repository has from {work['url'] or 'nowhere'} "
                                f"({exc}): fetch from the remote in the repository, and try again") from None
    else:
        _git("-C", mirror, "update-ref", ref, work["head"])
    _discard(dest)
    # A clone sharing the mirror's objects: cheap, and with branches of its own (one branch
    # may be checked out by two attempts at once), its remote the repository's own.
    _git("clone", "-q", "--shared", "--no-checkout", "--origin", work["remote"] or "origin", mirror, dest)
    if work["url"]:
        _git("-C", dest, "remote", "set-url", work["remote"], work["url"])
    else:
        _git("-C", dest, "remote", "remove", "origin")
    for name, value in work.get("identity", {}).items():
        _git("-C", dest, "config", name, value)
    _git("-C", dest, "checkout", "-q", "-B", work["branch"] or f"orchestra/{key}", work["head"])
    if work["patch"]:
        _git("-C", dest, "apply", "--binary", "--whitespace=nowarn", "-", input=work["patch"])
    cwd = os.path.normpath(os.path.join(dest, work["subdir"]))
    os.makedirs(cwd, exist_ok=True)
    return cwd


def collect(root: str, key: str, start: str, sent: str) -> dict:
    """What attempt `key` left in its checkout, to `apply` on the daemon's machine: it
    started at commit `start` with the uncommitted changes whose digest is `sent`."""
    _, dest = _place(root, key)
    head = _rev(dest, "HEAD")
    return {
        "start": start, "sent": sent, "head": head,
        "bundle": _bundle(dest, start) if head != start else None,
        "patch": _uncommitted(dest),
    }


def discard(root: str, key: str, mirror: str) -> None:
    """Remove attempt `key`'s checkout and what kept its commits in the mirror."""
    mirrors, dest = _place(root, key)
    path = os.path.join(mirrors, f"{mirror}.git")
    _discard(dest)
    with contextlib.suppress(WorkError):
        _git("-C", path, "update-ref", "-d", f"refs/orchestra/in/{key}")


def _discard(dest: str) -> None:
    if os.path.lexists(dest):
        shutil.rmtree(dest, ignore_errors=True)


# -- an agent's own state ------------------------------------------------------------------


def pack_dir(path: str) -> bytes | None:
    """The files under `path` as a gzipped tar; None when there is no such directory."""
    if not os.path.isdir(path):
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname=".")
    return buffer.getvalue()


def unpack_dir(data: bytes, path: str) -> None:
    """Put the files of `pack_dir`'s tar under `path`, over what is there."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(path, filter="data")
