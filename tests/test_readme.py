"""The README stays true: every route, command and config key it must document is there."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from tracker.app import create_app
from tracker.cli import build_parser
from tracker.config import SECTIONS, Settings
from tracker.openapi import document

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def test_readme_documents_every_route_the_app_serves():
    routes = _section("Routes")
    for path in document()["paths"]:
        assert f"`{path}`" in routes or f" {path}`" in routes or f"{path}?" in routes, path


def test_every_documented_route_exists_in_the_openapi_document():
    routes = _section("Routes")
    paths = set(document()["paths"])
    for path in re.findall(r"`(?:GET|POST) (/[^` ?]*)", routes):
        assert path in paths, path


def test_openapi_covers_every_starlette_route_of_the_app():
    app = create_app(Settings())
    # a {name:path} convertor is the plain {name} in OpenAPI
    served = {r.path.replace(":path}", "}") for r in app.starlette.routes}  # type: ignore[attr-defined]
    assert served <= set(document()["paths"])


def test_readme_documents_every_command_and_its_flags():
    commands = _section("Commands")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert f"`tracker {name}" in commands, name
        for action in p._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in ("--help", "--db", "--config"):
                    assert flag in commands, f"{name} {flag}"
    assert "--db PATH" in commands and "--config PATH" in commands


def test_readme_and_config_toml_document_every_config_key():
    config = _section("Configuration")
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    for section, struct in SECTIONS.items():
        for key in struct.__struct_fields__:
            assert (
                f"`{section}.{key}`" in config
                or f"`{section}.{key}`," in config
                or (f"{section}.{key}" in config)
            ), f"{section}.{key} missing from README"
            assert key in shipped[section], f"{section}.{key} missing from config.toml"
    assert "outcomes" in shipped


def test_config_toml_holds_the_built_in_defaults():
    shipped = msgspec.convert(tomllib.loads((ROOT / "config.toml").read_text()), Settings)
    assert shipped == Settings()


def test_readme_session_shows_real_output_of_a_full_call():
    session = _section("A session")
    assert "SESSION" not in session
    for needle in (
        '"seq":',
        '"duplicate":true',
        '"status":"ended"',
        '"outcome":"normal"',
        '"calls":',
    ):
        assert needle in session, needle
    for route in ("/callbacks", "/calls/c-abc", "/calls/c-abc/events", "/calls?", "/stats"):
        assert route in session, route
