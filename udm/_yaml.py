"""Reading experiment YAML safely: a safe loader, no duplicate keys, and a bound on alias expansion.

PyYAML's ``SafeLoader`` never runs code, but two things still hurt: a key written twice silently keeps
the last value, and aliases (``*a``) share nodes, so a document of a few hundred bytes can expand to
billions of values (the "billion laughs" alias bomb) once anything walks it. :func:`load` refuses both
with an error naming the file, line and column, before the document is built.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["load", "MAX_NODES"]

#: the most values (scalars, lists, mappings) a document may hold once its aliases are expanded
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 needs ``1.0e-3``) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                first = seen[key].start_mark.line + 1
                raise ConfigError(f"{self.name}:{line}:{col}: the key {key!r} must appear once in its mapping; got it "
                                  f"again (first on line {first}). Keep one of the two.")
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _expanded_size(root: yaml.Node, source: str) -> int:
    """How many nodes the document holds with every alias expanded (shared nodes counted each time)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            mark = node.start_mark
            raise ConfigError(f"{source}:{mark.line + 1}:{mark.column + 1}: an alias must not contain itself; got a "
                              f"recursive alias. Write the value out instead.")
        on_path.add(key)
        children = node.value if isinstance(node.value, list) else []
        total = 1
        for child in children:
            total += sum(size(c) for c in child) if isinstance(child, tuple) else size(child)
        on_path.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load(text: str, source: str = "<config>") -> Any:
    """The YAML document in ``text`` (safe loader); every problem is a :class:`ConfigError` naming ``source``."""
    loader = _Loader(text)
    loader.name = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, source)
        if n > MAX_NODES:
            raise ConfigError(f"{source}: the document must hold at most {MAX_NODES} values once its aliases are "
                              f"expanded; got {n}. Remove the nested aliases (&name / *name) that multiply it.")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: YAML syntax must be valid; got {exc.problem or exc}. "
                          f"Fix the file at line {mark.line + 1 if mark else '?'}, column "
                          f"{mark.column + 1 if mark else '?'}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML must be valid; got {exc}. Fix the file.") from None
    except RecursionError:
        raise ConfigError(f"{source}: the document must nest at most a few hundred levels deep; got deeper. "
                          f"Flatten it.") from None
    finally:
        loader.dispose()
