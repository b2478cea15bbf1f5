"""workbench.plots: pure DataFrame -> Figure builders."""
import math

from workbench import plots


def frame():
    rows = [{"step": s, "time": 0.0, "loss/reward": 0.7 - 0.1 * s, "rm/accuracy": 0.5 + 0.1 * s,
             "rm/margin": 0.2 * s} for s in range(1, 5)]
    rows[1].update({"val/loss": 0.6, "val/accuracy": 0.6, "val/margin": 0.3})
    rows[3].update({"val/loss": 0.4, "val/accuracy": 0.8, "val/margin": 0.9})
    return plots.metrics_frame(list(reversed(rows)))  # out of order on purpose: the frame sorts by step


def test_metrics_frame_sorts_and_keeps_gaps():
    df = frame()
    assert df["step"].tolist() == [1, 2, 3, 4]
    assert math.isnan(df.loc[0, "val/loss"]) and df.loc[1, "val/loss"] == 0.6


def test_loss_figure_has_train_and_sparse_val_traces():
    fig = plots.reward_loss_figure(frame())
    train, val = fig.data
    assert (train.name, val.name) == ("train", "validation")
    assert list(train.x) == [1, 2, 3, 4] and list(val.x) == [2, 4] and list(val.y) == [0.6, 0.4]
    assert train.mode == "lines" and val.mode == "lines+markers"
    assert fig.layout.xaxis.title.text == "step" and fig.layout.yaxis.title.text == "loss"


def test_accuracy_and_margin_figures():
    acc = plots.reward_accuracy_figure(frame())
    assert [t.name for t in acc.data] == ["train", "validation"] and tuple(acc.layout.yaxis.range) == (0, 1.02)
    assert list(acc.data[1].y) == [0.6, 0.8]
    margin = plots.reward_margin_figure(frame().drop(columns=["val/margin"]))
    assert [t.name for t in margin.data] == ["train"] and margin.layout.yaxis.title.text == "margin"


def test_empty_frames_give_a_placeholder():
    for fig in (plots.reward_loss_figure(plots.metrics_frame([])), plots.score_histogram([], [])):
        assert len(fig.data) == 0 and fig.layout.annotations[0].text.startswith("no ")


def test_score_histogram_overlays_chosen_and_rejected_on_shared_bins():
    fig = plots.score_histogram([1.0, 2.0, 3.0], [-1.0, 0.0])
    chosen, rejected = fig.data
    assert chosen.name == "chosen (n=3)" and rejected.name == "rejected (n=2)"
    assert list(chosen.x) == [1.0, 2.0, 3.0] and fig.layout.barmode == "overlay"
    assert chosen.xbins == rejected.xbins and chosen.xbins.start == -1.0
    assert fig.layout.xaxis.title.text == "score"


def test_progress_bar_fills_by_step_and_colours_by_state():
    from workbench.progress import progress_bar
    html = progress_bar(3, 12, "running", "reward-progress")
    assert 'id="reward-progress"' in html and 'data-step="3"' in html and 'data-total="12"' in html
    assert "width:25.0%" in html and "#2c7be5" in html
    assert "width:100.0%" in progress_bar(12, 12, "finished", "x") and "#2ca02c" in progress_bar(12, 12, "finished", "x")
    assert "width:0.0%" in progress_bar(0, 0, None, "x")  # no total yet: empty, no division by zero
    assert 'data-step="2"' in progress_bar(5, 9, "running", "x", data_step=2)
