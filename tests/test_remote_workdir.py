"""A task's working directory carried to a node and back (orchestrad.remote.workdir), with
real git and no cluster: the node's side runs here, in a directory of its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestrad.remote import workdir
from orchestrad.remote.workdir import WorkError
from tests.gitrepo import racily_change

ID = ["-c", "user.name=t", "-c", "user.email=t@localhost"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *ID, *args], check=True, capture_output=True, text=True).stdout.rstrip("\n")


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "src").mkdir()
    (path / "src" / "a.py").write_text("a = 1\n")
    (path / "gone.txt").write_text("to be deleted\n")
    (path / ".gitignore").write_text("build/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


def send(cwd: Path, root: Path, key: str = "1.1") -> tuple[dict, str]:
    work = workdir.outgoing(str(cwd))
    return work, workdir.checkout(str(root), key, work)


def test_a_checkout_on_the_node_has_the_commit_and_what_is_uncommitted(repo, tmp_path):
    (repo / "src" / "a.py").write_text("a = 2\n")  # changed, not committed
    (repo / "new.txt").write_text("untracked\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_text("ignored")
    work, cwd = send(repo / "src", tmp_path / "node")
    assert work["url"] == "" and work["bundle"]  # no remote: the whole history is shipped
    top = Path(cwd).parent
    assert Path(cwd).name == "src" and (Path(cwd) / "a.py").read_text() == "a = 2\n"
    assert (top / "new.txt").read_text() == "untracked\n" and not (top / "build").exists()
    assert git(top, "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    assert git(top, "branch", "--show-current") == "main"
    assert "src/a.py" in git(repo, "diff", "--name-only")  # this checkout's index untouched: still unstaged
    assert oct((tmp_path / "node").stat().st_mode & 0o777) == "0o700"


def test_what_the_task_left_comes_back_commits_and_uncommitted_alike(repo, tmp_path):
    (repo / "sent.txt").write_text("sent uncommitted\n")
    work, cwd = send(repo, tmp_path / "node")
    node = Path(cwd)
    (node / "src" / "a.py").write_text("a = 3\n")
    git(node, "commit", "-q", "-am", "the agent's commit")
    (node / "gone.txt").unlink()
    (node / "left.txt").write_text("left uncommitted\n")
    (node / "sent.txt").unlink()
    back = workdir.collect(str(tmp_path / "node"), "1.1", work["head"], workdir.digest(work["patch"]))
    assert back["bundle"] and back["head"] != work["head"]
    assert workdir.apply(str(repo), back, "1-1") == ""
    assert git(repo, "rev-parse", "HEAD") == back["head"]
    assert git(repo, "log", "-1", "--format=%s") == "the agent's commit"
    assert (repo / "src" / "a.py").read_text() == "a = 3\n"
    assert not (repo / "gone.txt").exists() and not (repo / "sent.txt").exists()
    assert (repo / "left.txt").read_text() == "left uncommitted\n"
    assert set(git(repo, "status", "--porcelain").splitlines()) == {" D gone.txt", "?? left.txt"}
    assert workdir.apply(str(repo), back, "1-1") == ""  # twice (a restart between): as once
    assert (repo / "left.txt").read_text() == "left uncommitted\n"


def test_a_checkout_changed_here_meanwhile_keeps_the_work_on_a_ref(repo, tmp_path):
    work, cwd = send(repo, tmp_path / "node")
    (Path(cwd) / "theirs.txt").write_text("theirs\n")
    git(Path(cwd), "add", "theirs.txt")
    git(Path(cwd), "commit", "-q", "-m", "theirs")
    (Path(cwd) / "loose.txt").write_text("loose\n")
    back = workdir.collect(str(tmp_path / "node"), "1.1", work["head"], workdir.digest(work["patch"]))
    (repo / "mine.txt").write_text("mine\n")  # someone worked here meanwhile
    said = workdir.apply(str(repo), back, "7-1")
    assert "refs/orchestra/returned/7-1" in said and "orchestra-7-1.patch" in said
    assert (repo / "mine.txt").read_text() == "mine\n" and not (repo / "theirs.txt").exists()
    assert git(repo, "log", "-1", "--format=%s", "refs/orchestra/returned/7-1") == "theirs"
    assert b"loose.txt" in (repo / ".git" / "orchestra-7-1.patch").read_bytes()


def test_with_a_remote_only_what_it_lacks_is_shipped_and_the_node_fetches_the_rest(repo, tmp_path):
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    git(repo, "fetch", "-q", "origin")
    work = workdir.outgoing(str(repo))
    assert work["url"] == str(origin) and work["bundle"] is None  # all of it is on the remote
    (repo / "local.txt").write_text("not pushed\n")
    git(repo, "add", "local.txt")
    git(repo, "commit", "-q", "-m", "local only")
    work = workdir.outgoing(str(repo))
    assert work["bundle"] is not None
    (tmp_path / "b").write_bytes(work["bundle"])
    verified = subprocess.run(["git", "-C", str(repo), "bundle", "verify", str(tmp_path / "b")], capture_output=True, text=True)
    assert "requires this ref" in verified.stdout + verified.stderr  # the pushed commit is fetched, not shipped
    cwd = workdir.checkout(str(tmp_path / "node"), "2.1", work)
    assert (Path(cwd) / "local.txt").read_text() == "not pushed\n"
    mirror = next((tmp_path / "node" / "mirrors").iterdir())
    assert git(mirror, "rev-parse", "refs/heads/main") == git(repo, "rev-parse", "origin/main")
    assert git(Path(cwd), "rev-parse", "origin/main") == git(repo, "rev-parse", "origin/main")  # as here
    assert git(Path(cwd), "remote", "get-url", "origin") == str(origin)


def test_a_remote_the_node_cannot_fetch_from_says_so(repo, tmp_path):
    git(repo, "remote", "add", "origin", str(tmp_path / "nowhere.git"))
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")  # fetched once, since gone
    work = workdir.outgoing(str(repo))
    with pytest.raises(WorkError, match="could not fetch the task's repository from .*nowhere.git.*give it access"):
        workdir.checkout(str(tmp_path / "node"), "3.1", work)


def test_a_directory_not_in_git_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(WorkError, match="not in a git repository.*--executor local"):
        workdir.outgoing(str(tmp_path))


def test_discard_removes_the_checkout_and_a_second_attempt_gets_a_fresh_one(repo, tmp_path):
    work, cwd = send(repo, tmp_path / "node", "4.1")
    (Path(cwd) / "scratch").write_text("x")
    workdir.discard(str(tmp_path / "node"), "4.1", work["mirror"])
    assert not os.path.exists(cwd)
    again = workdir.checkout(str(tmp_path / "node"), "4.2", work)
    assert not (Path(again) / "scratch").exists() and git(Path(again), "branch", "--show-current") == "main"
    both = workdir.checkout(str(tmp_path / "node"), "4.3", work)  # one branch, two attempts at once
    assert git(Path(both), "branch", "--show-current") == "main" and os.path.isdir(again)
    assert git(Path(both), "remote") == ""  # as here: no remote


def test_a_directory_travels_as_a_tar(tmp_path):
    src = tmp_path / "projects" / "p"
    (src / "sub").mkdir(parents=True)
    (src / "s.jsonl").write_text('{"a": 1}\n')
    (src / "sub" / "t.jsonl").write_text("{}\n")
    data = workdir.pack_dir(str(src))
    assert workdir.pack_dir(str(tmp_path / "none")) is None
    workdir.unpack_dir(data, str(tmp_path / "there"))
    assert (tmp_path / "there" / "s.jsonl").read_text() == '{"a": 1}\n'
    assert (tmp_path / "there" / "sub" / "t.jsonl").read_text() == "{}\n"


def test_a_change_git_sees_only_by_content_is_sent(repo, tmp_path):
    """The copy of the index that finds what is uncommitted keeps its mtime, or a change
    within the second the index was written is left behind."""
    racily_change(repo, "src/a.py", "a = 2\n")
    work, cwd = send(repo, tmp_path / "node")
    assert (Path(cwd) / "src" / "a.py").read_text() == "a = 2\n"
