"""The analyses' inputs (qalign_lib.analysis.inputs): parallel questions aligned by id."""
import pytest

from qalign_lib.analysis import inputs
from qalign_lib.core.errors import ConfigError


def test_parallel_questions_align_by_id_and_name_missing_languages(synthetic_data):
    ids, q = inputs.parallel_questions("mgsm", "de,te", 3)
    assert ids == [0, 1, 2] and set(q) == {"en", "de", "te"}
    with pytest.raises(ConfigError, match="mSVAMP has no parallel questions in te"):
        inputs.parallel_questions("msvamp", "te")
    with pytest.raises(ConfigError, match="en is the reference"):
        inputs.parallel_questions("mgsm", "en,de")
