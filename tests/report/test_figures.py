"""The report's figures (qalign_lib.report.figures)."""
import pandas as pd


def test_consistency_panel_without_data_says_so():
    from qalign_lib.report import figures

    frame = pd.DataFrame([{"benchmark": "mGSM", "system": "A", "lang": "de", "jaccard": float("nan"), "agreement": 50.0},
                          {"benchmark": "mGSM", "system": "B", "lang": "de", "jaccard": float("nan"), "agreement": 25.0}])
    fig = figures.consistency_grid(frame, "t")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("no data: no question answered correctly") for t in texts)
    assert sum(bool(ax.patches) for ax in fig.axes) == 1  # the agreement panel keeps its bars
