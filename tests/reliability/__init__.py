"""The reliability suite: crashes, damaged storage, a full disk, hostile clients,
misbehaving agents and who may connect. Each test runs a real daemon; `harness` holds
what they share, `crashloop` the crash loop that bench/reliability.py runs at length."""
