"""`config`: read the settings, or change one (the change is recorded in the daemon's log)."""

from __future__ import annotations

import click
import msgspec

from orchestra.shared import protocol as p
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


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.pass_obj
def config_set(app: App, key, value):
    """VALUE is JSON where it parses as JSON (4, 2.5, null, {"tester": 1}), else text;
    none clears a setting that may be empty."""
    click.echo(_settings(app.call(p.ConfigSet(key=key, value=parse_value(value)))))


def parse_value(text: str) -> p.ConfigValue:
    """What `config set` sends for VALUE: None for none (as the daemon's messages offer
    it), the JSON value where the text is JSON of a kind some setting takes, else the text
    itself. JSON of another kind (`[1]`, `{"tester": 1.5}`) goes as text too, so that the
    daemon refuses it with the sentence saying what the setting takes, as for any other
    word it cannot use (`-3` is a value here, not an option: the command takes none)."""
    if text.strip().lower() == "none":
        return None
    try:
        return msgspec.json.decode(text, type=p.ConfigValue)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return text
