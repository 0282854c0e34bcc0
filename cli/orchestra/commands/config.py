"""`config`: read the settings, or change one (the change is recorded in the daemon's log)."""

from __future__ import annotations

import click
import msgspec

from orchestra import protocol as p
from orchestra.commands.base import App, emit, json_option


def _settings(values: dict) -> str:
    return "\n".join(f"{name} = {msgspec.json.encode(value).decode()}" for name, value in values.items())


@click.group()
def config():
    """Read or change settings (recorded in the daemon's log)."""


@config.command("get")
@click.argument("key", required=False)
@json_option
@click.pass_obj
def config_get(app: App, key, as_json):
    emit(app.call(p.ConfigGet(key=key)), as_json, _settings)


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def config_set(app: App, key, value):
    """VALUE is JSON where it parses as JSON (4, 2.5, null, {"tester": 1}), else text."""
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        parsed = value
    click.echo(_settings(app.call(p.ConfigSet(key=key, value=parsed))))
