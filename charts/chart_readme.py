"""The chart's README.md, helm-docs style: charts/chat-gateway/README.md.tmpl with its
`{{ values_table }}` replaced by a table of every value, its type, default and description.

A value's description is the comment block right above its key in values.yaml (a leading
`-- `, helm-docs' marker, is dropped). A mapping whose keys have descriptions is listed
key by key; any other value (a scalar, a list, a mapping documented as a whole) is one row.
charts/generate.py writes the README (`make manifests`) and its --check keeps it in sync.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(?:\s|$)")


def descriptions(text: str) -> dict[tuple[str, ...], str]:
    """Key path -> the comment block right above it (same indentation, no blank line)."""
    out: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append((indent, stripped.lstrip("#").strip()))
            continue
        m = KEY.match(line)
        if m and not stripped.startswith("- "):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = tuple(k for _, k in stack) + (m.group(2),)
            words = [t for i, t in pending if i == indent]
            if words and words[0].startswith("--"):
                words[0] = words[0][2:].strip()
            out[path] = " ".join(w for w in words if w)
            stack.append((indent, m.group(2)))
        pending = []
    return out


def rows(values: dict, docs: dict[tuple[str, ...], str]) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every documented value, in file order."""
    out = []

    def visit(path: tuple[str, ...], value):
        children_documented = isinstance(value, dict) and value and any(
            p[: len(path)] == path and len(p) > len(path) and d for p, d in docs.items())
        if children_documented:
            for k, v in value.items():
                visit(path + (k,), v)
            return
        kind = {bool: "bool", int: "int", float: "float", str: "string", list: "list",
                dict: "object", type(None): "null"}[type(value)]
        out.append((".".join(path), kind, json.dumps(value), docs.get(path, "")))

    for key, value in values.items():
        visit((key,), value)
    return out


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme(chart: Path) -> str:
    text = (chart / "values.yaml").read_text()
    table = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, kind, default, desc in rows(yaml.safe_load(text), descriptions(text)):
        table.append(f"| `{key}` | {kind} | `{cell(default)}` | {cell(desc)} |")
    template = (chart / "README.md.tmpl").read_text()
    assert "{{ values_table }}" in template, "README.md.tmpl lacks {{ values_table }}"
    return template.replace("{{ values_table }}", "\n".join(table))
