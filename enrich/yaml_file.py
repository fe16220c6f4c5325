"""A config file's YAML: read safely (an alias bomb or a loop is refused), with the line of each key
for messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _key_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):  # a list of mappings (`steps:`): each item by its index
        for index, item in enumerate(node.value):
            path = (*prefix, str(index))
            out[path] = item.start_mark.line + 1
            _key_lines(item, path, out)


# A config is a few hundred values; far more means YAML anchors and aliases that multiply (an
# "alias bomb": a few lines that expand to billions of values), which would take the machine.
MAX_CONFIG_VALUES = 100_000


def read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}. Check the path, or run from the folder it is relative to."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None and _expanded_size(root) > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{path}: the YAML expands to more than {MAX_CONFIG_VALUES:,} values through its anchors and "
                "aliases (&name / *name), far more than any config holds. Write the values out, or remove the "
                "aliases that repeat other aliases."
            )
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{at}: the YAML is malformed: {exc.problem}. Check the indentation and quote "
            "values that contain `: `, `#` or start with `{`, `[`, `*` or `&`."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the YAML is malformed: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply to be a config.") from None
    finally:
        loader.dispose()
    lines: dict[tuple[str, ...], int] = {}
    if root is not None:
        _key_lines(root, (), lines)
    return data, lines


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded, counted without
    expanding them (each node is counted once and reused: linear in the file's size)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:  # still being counted: the node contains itself
                raise yaml.YAMLError("an alias refers to a value that contains it (a loop), which no config needs")
            return known
        sizes[id(node)] = -1
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        sizes[id(node)] = total = min(total, MAX_CONFIG_VALUES + 1)
        return total

    return size(root)
