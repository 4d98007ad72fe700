"""qalign_lib.core.yamlfiles: duplicate keys, alias bombs, recursive aliases and oversized files are one-line errors."""
import time

import pytest

from qalign_lib.core import yamlfiles
from qalign_lib.core.errors import ConfigError


def _bomb(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nlangs: *a{levels - 1}\n"


def test_plain_documents_load_and_merge_keys_may_be_overridden():
    assert yamlfiles.loads("a: 1\nb: [x, y]\n", "t") == {"a": 1, "b": ["x", "y"]}
    assert yamlfiles.loads("", "t") is None
    assert yamlfiles.loads("base: &b {x: 1, y: 2}\nz:\n  <<: *b\n  y: 3\n", "t")["z"] == {"x": 1, "y": 3}
    assert yamlfiles.loads("a: &l [de, fr]\nb: *l\n", "t") == {"a": ["de", "fr"], "b": ["de", "fr"]}


def test_duplicate_keys_name_both_lines():
    with pytest.raises(ConfigError, match=r"^t: line 3: duplicate key 's1' \(first on line 2\)"):
        yamlfiles.loads("runs:\n  s1: {stage: 1}\n  s1: {stage: 2}\n", "t")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        yamlfiles.loads("lr: 1\nx: {a: 1}\nlr: 2\n", "t")


def test_alias_bomb_is_refused_quickly():
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^t: expands to more than 100000 YAML nodes"):
        yamlfiles.loads(_bomb(10), "t")  # 10 levels x 10: 10^10 nodes if expanded
    assert time.monotonic() - start < 2
    assert len(yamlfiles.loads(_bomb(3), "t")["langs"]) == 10  # 1,111 nodes: fine


def test_recursive_alias_and_size_limit(tmp_path):
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        yamlfiles.loads("a: &a [1, *a]\n", "t")
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "a" * (yamlfiles.MAX_BYTES + 1) + "\n")
    with pytest.raises(ConfigError, match=rf"^{big}: \d+ bytes, larger than the limit"):
        yamlfiles.load(big)
    with pytest.raises(ConfigError, match="larger than"):
        yamlfiles.loads("x: " + "a" * (yamlfiles.MAX_BYTES + 1), "t")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: cannot be read"):
        yamlfiles.load(bad)
