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


def _effects():
    from qalign_lib.analysis import effects
    from tests.helpers import fake_analysis

    found = {"A": fake_analysis(0.0, 0.4, n=12), "B": fake_analysis(1.0, 0.8, n=12), "C": fake_analysis(0.0, 0.4, n=12)}
    pairs = [("A", "B"), ("A", "C")]
    return (effects.effects(found, pairs, "mgsm", n_boot=100), effects.layer_effects(found, pairs, "mgsm", n_boot=100))


def test_effects_forest_shares_the_translation_axis_and_colours_by_holm():
    from matplotlib.colors import to_rgba

    from qalign_lib.report import figures

    eff, _ = _effects()
    fig = figures.effects_forest(eff, "t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "translation into English: chrF, BLEU"  # chrF and BLEU on one axis
    n_measures = eff["measure"].nunique()
    assert len(titles) == n_measures - 1 and "cosine with English (exploratory)" in titles
    ax = fig.axes[0]
    faces = [to_rgba(line.get_markerfacecolor()) for line in ax.lines if line.get_marker() in ("o", "s")
             and len(line.get_xdata()) == 1]
    # B - A (p = 2/4096 per row, Holm over 8: significant) filled blue twice; C - A (p = 1) hollow twice
    assert faces.count(to_rgba(figures.SIGNIFICANT_COLOR)) == 2 and faces.count(to_rgba("white")) == 2
    legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert legend[0] == "Holm-adjusted p < 0.05 (primary family)" and legend[-1] == "not significant (Holm)"


def test_layer_effects_lines_mark_the_holm_significant_layers():
    from qalign_lib.report import figures

    _, lay = _effects()
    fig = figures.layer_effects_lines(lay, "t")
    assert len(fig.axes) == lay["measure"].nunique()
    filled = [line for line in fig.axes[0].lines if line.get_marker() == "o" and line.get_markerfacecolor() != "white"]
    sig = lay[(lay["measure"] == lay["measure"].iloc[0]) & (lay["p_adj"] < 0.05)]
    assert sum(len(line.get_xdata()) for line in filled) == len(sig) > 0
