"""Reading the project's YAML files (sizes, studies, bench and paper tables) safely: a file size limit, duplicate
keys refused (YAML's last-one-wins would silently drop a run or a parameter), and no alias expansion beyond a limit
(a 10 x 10 alias bomb expands to 10^10 nodes). Every error is a ConfigError naming the file and the line."""
from __future__ import annotations

from pathlib import Path

import yaml

from qalign_lib.core.errors import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB: the paper's study file is ~6 KB
MAX_NODES = 100_000  # nodes after alias expansion: every real parameter file has a few hundred


class _Duplicate(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (merge keys ``<<`` may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _Duplicate(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first on line "
                                 f"{seen[key] + 1}); YAML would keep only the last one, so keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _count(node, limit: int, source: str) -> int:
    """The number of nodes ``node`` expands to (aliases counted as often as they are used), refusing past ``limit``
    or on a recursive alias. Memoised per node, so a bomb is counted without being expanded."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def walk(n) -> int:
        if id(n) in memo:
            return memo[id(n)]
        if id(n) in active:
            raise ConfigError(f"{source}: line {n.start_mark.line + 1}: a recursive YAML alias; write the value out")
        active.add(id(n))
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(walk(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(walk(k) + walk(v) for k, v in n.value)
        else:
            total = 1
        active.discard(id(n))
        if total > limit:
            raise ConfigError(f"{source}: expands to more than {limit} YAML nodes (aliases counted each time they are "
                              f"used, near line {n.start_mark.line + 1}); write the values out instead of nesting aliases")
        memo[id(n)] = total
        return total

    try:
        return walk(node)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply; flatten it") from None


def loads(text: str, source: str, max_nodes: int = MAX_NODES):
    """The YAML document in ``text`` (None when empty), checked as above; ``source`` names it in errors."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_BYTES} bytes; a parameter file is a few KB")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count(node, max_nodes, source)
        return loader.construct_document(node)
    except _Duplicate as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply; flatten it") from None
    finally:
        loader.dispose()


def load(path: Path, max_nodes: int = MAX_NODES):
    """The YAML document of the file ``path`` (None when empty): size-limited before reading, then as ``loads``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes, larger than the limit of {MAX_BYTES}; a parameter file is a few KB")
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None
    return loads(text, str(path), max_nodes)
