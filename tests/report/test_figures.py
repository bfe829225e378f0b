"""Figures draw the numbers they are given, in the tables' units (top-1 in %, differences in points) with their
intervals, labelled chance and reference lines and legends off the data; the qualitative figure shows as many
images CFT breaks as it corrects, and its title counts both."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from cftlib.metrics import accuracy, examples, intervals
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


def test_balanced_picks_as_many_regressions_as_corrections():
    labels = np.arange(10)
    base = np.array([9, 9, 9, 3, 4, 5, 6, 7, 8, 9])  # wrong on 0, 1, 2 (and right on 9 by chance)
    cft = np.array([0, 1, 2, 0, 0, 5, 6, 7, 8, 9])  # fixes 0, 1, 2; breaks 3, 4
    picks = examples.balanced(base, cft, labels, 4)
    assert picks == [(0, "corrected"), (1, "corrected"), (3, "regressed"), (4, "regressed")]
    # a kind that runs short leaves its rows to the other, then to images both get right
    assert examples.balanced(base, cft, labels, 7) == [(0, "corrected"), (1, "corrected"), (2, "corrected"),
                                                      (3, "regressed"), (4, "regressed"), (5, "both right"),
                                                      (6, "both right")]
    assert examples.balanced(labels, labels, labels, 2) == [(0, "both right"), (1, "both right")]
    counts = accuracy.flips(cft, base, labels)
    title = figures.flip_title("bg_conflict", counts, picks)
    assert "10 images: CFT corrects 3" in title and "breaks 2" in title and "net +1" in title
    assert title.endswith("rows: 2 corrected, 2 regressed")


def test_part_usage_scales_its_colours_on_the_parts_not_the_background():
    usage = pd.DataFrame([dict(model="vit", arm=arm, seed=0, split="bg_conflict", label=label, part=part, mass=m,
                               images=1) for arm, m0 in (("none", 0.2), ("cft", 0.3)) for label in (0, 1)
                          for part, m in (("beak", m0 / 2), ("wing", m0 / 2), ("background", 1 - m0))])
    fig = figures.part_usage(usage, "bg_conflict")
    parts, background = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in parts.texts] == ["10.0", "10.0", "15.0", "15.0"]  # rows none, cft
    assert [t.get_text() for t in background.texts] == ["80.0", "70.0"]
    assert parts.collections[0].get_clim() == pytest.approx((10.0, 15.0))  # 70 and 80 set no colour
    assert fig.axes[2].get_ylabel() == "share of relevance (%)"  # the colour bar says its unit
    assert "no part masks" in figures.part_usage(usage, "test").axes[0].texts[0].get_text()


def test_arm_bars_draw_percent_with_a_labelled_chance_line():
    fig = figures.arm_bars(_frame(), "top1", ["test", "bg_conflict"], chance=0.02, ylabel="top-1 (%)")
    ax = fig.axes[0]
    heights = [b.get_height() for b in ax.containers[0]]  # the base, at 0.5 on both splits
    assert heights == pytest.approx([50.0, 50.0]) and ax.get_ylabel() == "top-1 (%)"
    assert "chance, 2 %" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [2.0]


def test_alignment_panels_one_per_metric_uniform_map_on_concept_mass_only():
    align = pd.DataFrame([dict(model="vit", arm=arm, seed=seed, split=split, pixAcc=0.8, concept_mass=cm,
                               concept_area=0.1) for arm, cm in (("none", 0.2), ("cft", 0.3)) for seed in range(3)
                          for split in ("test", "bg_conflict")])
    fig = figures.alignment_bars(align, ["pixAcc", "concept_mass"])
    pix, mass = fig.axes[:2]
    assert (pix.get_title(), mass.get_title()) == ("pixel accuracy", "concept mass")
    assert [b.get_height() for b in mass.containers[1]] == pytest.approx([30.0, 30.0])  # cft, in %
    uniform = [[c for c in ax.collections if c.get_label() == "uniform map"] for ax in (pix, mass)]
    assert len(uniform[0]) == 0 and len(uniform[1]) == 1  # the dotted line on the concept-mass panel alone
    assert uniform[1][0].get_segments()[0][:, 1] == pytest.approx([10.0, 10.0])
    assert any(t.get_text().startswith("uniform map") for t in fig.legends[0].get_texts())


def test_flip_bars_show_corrections_up_regressions_down_and_the_net():
    rows = pd.DataFrame([dict(model="vit", arm="cft", seed=s, split="bg_conflict", images=100, corrected=c,
                              regressed=r) for s, (c, r) in enumerate([(10, 14), (12, 16), (14, 18)])])
    ax = figures.flip_bars(rows, "bg_conflict").axes[0]
    up, down = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert up[0].get_height() == pytest.approx(12.0) and down[0].get_height() == pytest.approx(-16.0)
    net, = [line for line in ax.get_lines() if line.get_marker() == "D"]
    assert net.get_ydata()[0] == pytest.approx(-4.0)  # top-1 lost 4 images
    assert ax.get_ylabel() == "images of 100"
    assert "nothing measured" in figures.flip_bars(rows, "test").axes[0].texts[0].get_text()


def test_sample_grid_saves_the_part_legend_with_it():
    a = {"images": np.zeros((2, 4, 4, 3), np.uint8), "parts": np.ones((2, 4, 4), np.int64), "label": np.array([0, 1])}
    fig = figures.sample_grid({"train": a}, ["a", "b"], per_split=2, parts=("body", "head"))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["body", "head"]


def _epochs():
    rows = []
    for seed, kept in ((0, 2), (1, 0)):
        for epoch in range(4):
            rows.append(dict(model="vit", arm="cft", seed=seed, epoch=epoch, best=int(epoch == kept), val_acc=1.0,
                             val_cft_align=0.3 - 0.01 * epoch * (seed == 0)))  # run 0 improves, run 1 does not
    rows.append(dict(model="vit", arm="none", seed=0, epoch=0, val_cft_align=0.3, best=1, val_acc=1.0))
    return pd.DataFrame(rows)


def test_selected_epochs_mark_the_kept_epoch_of_each_run_as_a_change_from_the_base():
    fig = figures.selected_epochs(_epochs())
    ax = fig.axes[0]
    assert ax.get_title() == "vit cft" and len(fig.axes) == 1  # the base has no epochs to select among
    dots = [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines() if line.get_marker() == "o"]
    assert dots == [(2, pytest.approx(-0.02)), (0, pytest.approx(0.0))]


def test_arm_curves_one_row_per_model_and_a_legend_with_lines():
    e = pd.concat([_epochs(), _epochs().assign(model="cnn", val_cft_align=0.9)])
    fig = figures.arm_curves([(e, "epoch", "val_cft_align", "held-out alignment")])
    vit, cnn = fig.axes
    assert vit.get_title() == "vit: held-out alignment" and cnn.get_ylim()[0] > 0.5  # each model its own scale
    handles = vit.get_legend().legend_handles
    assert [t.get_text() for t in vit.get_legend().get_texts()] == ["none", "cft"]
    assert all(h.get_linestyle() == "-" for h in handles)


def test_relevance_columns_outline_the_mask_dark_on_a_light_halo():
    images, mask = np.ones((1, 8, 8, 3)), np.zeros((1, 8, 8))
    mask[0, 2:6, 2:6] = 1
    fig = figures.relevance_columns(images, {"map": np.zeros((1, 8, 8))}, mask, ["train: dusk pipit"])
    for ax in fig.axes:
        colors = [tuple(c.get_edgecolor()[0][:3]) for c in ax.collections]
        assert colors == [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]
    assert fig.axes[0].get_ylabel() == "train: dusk pipit"


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
