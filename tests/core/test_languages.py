"""The language registry (qalign_lib.core.languages): codes, names, parsing."""
import pytest

from qalign_lib.core import benchmarks, languages
from qalign_lib.core.errors import ConfigError


def test_language_registry():
    assert languages.LANGS == ("bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en")
    assert [languages.name(c) for c in languages.LANGS] == [
        "Bengali", "Thai", "Swahili", "Japanese", "Chinese", "German", "French", "Russian", "Spanish", "English"]
    assert benchmarks.get("mgsm").langs[-1] == "te" and "en" not in languages.NON_EN
    assert benchmarks.get("mgsm").extra == ("te",) and benchmarks.get("msvamp").langs == languages.LANGS
    assert languages.parse_langs("de, zh,de") == ["de", "zh"]
    assert languages.parse_langs("non_en") == list(languages.NON_EN)
    with pytest.raises(ConfigError, match="unknown or unsupported language code.*xx"):
        languages.parse_langs("de,xx")
    with pytest.raises(ConfigError, match="unknown language code 'xx'"):
        languages.name("xx")
