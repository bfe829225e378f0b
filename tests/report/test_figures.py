"""Figures draw the numbers they are given: paired differences in points with their intervals, and the
qualitative figure's rows and title say which images the base gets wrong and CFT right."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cftlib.metrics import intervals
from cftlib.report import figures


def _frame():
    rows = []
    for seed in range(3):
        for split, gain in (("test", -0.01), ("bg_conflict", 0.10 + 0.01 * seed)):
            for arm, top1 in (("none", 0.5), ("ce", 0.52), ("cft", 0.5 + gain)):
                rows.append(dict(model="vit", arm=arm, seed=seed, split=split, top1=top1))
    return pd.DataFrame(rows)


def test_paired_differences_are_drawn_in_points_with_their_intervals():
    frame = _frame()
    fig = figures.paired_differences(frame, "top1", ["test", "bg_conflict"], [("cft", "none"), ("cft", "ce")])
    ax = fig.axes[0]
    base, ce = ax.containers  # one errorbar series per pair, in the order given
    assert base.lines[0].get_ydata() == pytest.approx([-1.0, 11.0])
    assert ce.lines[0].get_ydata() == pytest.approx([-3.0, 9.0])
    d = intervals.paired_difference(frame, "top1", "cft", "none", split="bg_conflict", model="vit")
    segment = base.lines[2][0].get_segments()[1]  # the whisker of bg_conflict
    assert segment[:, 1] == pytest.approx([100 * (d["mean"] - d["ci"]), 100 * (d["mean"] + d["ci"])])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cft − none", "cft − ce"]


def test_paired_differences_without_pairs_say_so():
    fig = figures.paired_differences(_frame(), "top1", ["test"], [("cft", "dfr")], title="vs DFR")
    assert "no paired runs" in fig.axes[0].texts[0].get_text()


def test_corrected_picks_fixed_images_first_then_both_right():
    labels = np.array([0, 1, 2, 3, 4])
    base = np.array([9, 1, 9, 3, 4])  # wrong on 0 and 2
    cft = np.array([0, 1, 9, 3, 4])  # fixes 0, not 2
    assert figures.corrected(base, cft, labels, 3) == [(0, True), (1, False), (3, False)]
    assert figures.corrected(labels, labels, labels, 2) == [(0, False), (1, False)]  # none fixed: both right


def test_part_usage_heatmap_shows_the_mean_share_per_arm_and_part():
    usage = pd.DataFrame([dict(model="vit", arm=arm, seed=0, split="bg_conflict", label=label, part=part, mass=m,
                               images=1) for arm, m0 in (("none", 0.2), ("cft", 0.6)) for label in (0, 1)
                          for part, m in (("beak", m0), ("background", 1 - m0))])
    fig = figures.part_usage(usage, "bg_conflict")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["20.0", "80.0", "60.0", "40.0"]  # rows none, cft; columns beak, background
    assert "no part masks" in figures.part_usage(usage, "test").axes[0].texts[0].get_text()


def test_save_writes_the_file_and_closes_the_figure_so_a_notebook_shows_it_once(tmp_path):
    fig = figures.note("hello")
    assert plt.fignum_exists(fig.number)
    got = figures.save(fig, tmp_path / "f.png", dpi=50)
    assert got is fig and not plt.fignum_exists(fig.number)  # the inline backend shows open figures only
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_bars_draw_the_same_pixels_twice(tmp_path):
    """No bootstrap in the whiskers: a rerun of a stage rewrites the same figure."""
    spread = np.random.default_rng(0).uniform(-0.2, 0.2, 8)
    acc = pd.DataFrame([dict(split=s, model="vit", accuracy=a + d) for s, a in (("test", 0.7), ("v2", 0.5))
                        for d in spread])
    first, again = (figures.save(figures.accuracy_bars(acc, 0.1, hue="model"), tmp_path / f"{i}.png", dpi=200)
                    and (tmp_path / f"{i}.png").read_bytes() for i in range(2))
    assert first == again
