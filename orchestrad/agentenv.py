"""What an agent's process finds in its environment.

An agent starts with the daemon's own environment, less the variables that look like
credentials (the daemon may hold `GH_TOKEN`, `AWS_SECRET_ACCESS_KEY` or a database URL
with a password that no agent asked for), plus what its agent kind needs (Claude Code needs
`ANTHROPIC_*` and `CLAUDE_*`), plus what the `pass_env` setting names, plus the task's own
`--env` values. Pure: the caller passes the environments in.

A name heuristic cannot know every secret, which is why the log keeps no value at all
(`orchestrad.envstore`); here it only decides what an agent inherits without being given
it, and `pass_env` is the way to hand on more.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re

CREDENTIAL = re.compile(
    r"KEY|TOKEN|SECRET|PASS|CREDENTIAL|AUTH|COOKIE|BEARER|PRIVATE|CERT|DSN|_PAT$|^PAT$|_SK$"
    r"|^DATABASE_URL$|_DATABASE_URL$|^AWS_|^AZURE_|^GOOGLE_APPLICATION|^SSH_AUTH_SOCK$|^GPG_AGENT|^VAULT_",
    re.IGNORECASE,
)
"""Names an agent does not inherit from the daemon unless its kind needs them or
`pass_env` names them."""


def looks_secret(name: str) -> bool:
    return CREDENTIAL.search(name) is not None


def inherited(base: dict[str, str], allow: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`base` without the credential-like names, except those matching a glob in `allow`."""
    return {
        name: value
        for name, value in base.items()
        if not looks_secret(name) or any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)
    }


def account(kind: str, env: dict[str, str], names: tuple[str, ...]) -> str:
    """The name of the account an agent of `kind` uses with `env`: the kind and a short hash
    of the values of `names` (its key, token, base URL), so that the log can say which
    account met a usage limit without holding any of them."""
    if not names:
        return kind
    material = "\0".join(f"{name}={env.get(name, '')}" for name in sorted(names))
    return f"{kind}:{hashlib.sha256(material.encode()).hexdigest()[:12]}"
