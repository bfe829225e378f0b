"""The paper's own figure for each comparison the claims report makes (arXiv 2603.08309v2; docs/paper.md §5.1),
in top-1 points unless stated, with the table it comes from and, where its tables disagree, the other values —
so a reader sees how far an effect measured here is from the one the paper reports. ViT-B unless stated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One of the paper's differences: `value` in points, `source` (table, model, benchmark), `others`: the
    same difference elsewhere in the paper where it disagrees (its inconsistencies, docs/paper.md §5.3)."""
    value: float | None
    source: str
    others: str = ""
    arm: str = "cft"
    versus: str = "none"
    metric: str = "top1"
    """The comparison of the claims report it is the paper's figure for (another metric: not comparable)."""

    def text(self) -> str:
        if self.value is None:
            return self.source
        return f"{self.value:+.1f} ({self.source})" + (f"; {self.others}" if self.others else "")


def _d(after: float, before: float) -> float:
    return round(after - before, 2)


# Table 1, ViT-B top-1 (mean of 5 seeds): Original, GradMask, RRR, RRDA, CFT
TABLE1 = {"IN-V": (80.41, 80.65, 80.89, 81.12, 81.35), "IN-V2": (68.32, 68.51, 68.68, 69.04, 69.19),
          "IN-A": (13.26, 15.37, 18.45, 25.12, 27.76), "ObjectNet": (33.26, 36.44, 40.32, 51.12, 54.28),
          "IN-R": (30.26, 33.19, 37.21, 47.12, 48.47), "IN-Sketch": (35.49, 36.00, 36.56, 36.85, 37.06)}
# Table 2, ViT-B top-1 on SI-Score's subsets (mean of 5 seeds), the same arms
TABLE2 = {"SI location": (34.26, 35.18, 36.42, 38.54, 39.15), "SI rotation": (40.26, 42.15, 44.83, 50.73, 52.15),
          "SI size": (55.26, 57.45, 59.14, 62.72, 63.15)}
BASELINES = ("gradmask", "rrr", "rrda")
_OOD = ("IN-A", "ObjectNet", "IN-R", "IN-Sketch")


def gain(bench: str, arm: str = "cft", versus: str = "none") -> float:
    """Table 1's (SI-Score: Table 2's) ViT-B difference `arm` − `versus` on `bench` (arms: none, gradmask, rrr,
    rrda, cft)."""
    col = {"none": 0, "gradmask": 1, "rrr": 2, "rrda": 3, "cft": 4}
    row = (TABLE1 | TABLE2)[bench]
    return _d(row[col[arm]], row[col[versus]])


_IN_A = Figure(gain("IN-A"), "Table 1, IN-A", "Table 5: +10.0, Table 6: +8.0")
_IN_R = Figure(gain("IN-R"), "Table 1, IN-R", "Table 5: +2.9, Table 6: +2.5")
FIGURES = {
    "bg_conflict": _IN_A,
    "pose": Figure(gain("ObjectNet"), "Table 1, ObjectNet", "Table 5: +7.2; Table 2, SI rotation: +11.9"),
    "rendition": _IN_R,
    "v2": Figure(gain("IN-V2"), "Table 1, IN-v2"),
    "benchmark_mean": Figure(round(sum(gain(b) for b in _OOD) / len(_OOD), 2),
                             "Table 1, mean of IN-A, ObjectNet, IN-R, IN-Sketch"),
    "color_conflict": Figure(None, "— (no on-object shortcut in the paper)"),
    "in_distribution": Figure(gain("IN-V"), "Table 1, IN val", "Tables 5–6: +1.0"),
    "parts": Figure(_d(68.23, 62.91), "Table 3, mIoU of the relevance with whole-object masks, not parts",
                    metric="mIoU"),
    "concept_vs_segmentation": Figure(_d(26.05, 24.12), "Table 5, IN-A, CFT − segmentation masks",
                                      "ObjectNet +0.6, IN-R +0.7", versus="cft_fgmask"),
    "confidence": Figure(None, "— (Table 6 drops one term at a time; no confidence-only row)"),
    "unseen": Figure(7.98, "Table 4, IN-A, mean change over four models on held-out classes",
                     "on fine-tuned classes +7.3"),
    "cnn": Figure(_d(27.93, 16.25), "Table 1, ConvNeXt-V2, IN-A"),
    "dfr": Figure(None, "— (not in the paper)"),
    "baselines": Figure(gain("IN-A", "cft", "rrda"), "Table 1, IN-A, CFT − RRDA (the strongest baseline)",
                        f"CFT − GradMask {gain('IN-A', 'cft', 'gradmask'):+.1f}, CFT − RRR "
                        f"{gain('IN-A', 'cft', 'rrr'):+.1f}; over the base GradMask {gain('IN-A', 'gradmask'):+.1f}, "
                        f"RRR {gain('IN-A', 'rrr'):+.1f}, RRDA {gain('IN-A', 'rrda'):+.1f}", versus="rrda"),
    # at paper scale the OOD benchmarks themselves (cftlib.data.datasets.LOADERS); Tables 5–6 from their Original
    # and CFT rows
    "imagenet_a": _IN_A,
    "objectnet": Figure(gain("ObjectNet"), "Table 1, ObjectNet", f"Tables 5–6: {_d(42.29, 35.12):+.1f}"),
    "imagenet_r": _IN_R,
    "imagenet_sketch": Figure(gain("IN-Sketch"), "Table 1, IN-Sketch", f"Tables 5–6: {_d(36.28, 35.47):+.1f}"),
    "si_location": Figure(gain("SI location"), "Table 2, SI-Score location", f"Tables 5–6: {_d(38.60, 33.36):+.1f}"),
    "si_rotation": Figure(gain("SI rotation"), "Table 2, SI-Score rotation",
                          f"Table 5: {_d(46.82, 39.18):+.1f}, Table 6: {_d(46.25, 39.18):+.1f}"),
    "si_size": Figure(gain("SI size"), "Table 2, SI-Score size",
                      f"Table 5: {_d(61.94, 55.65):+.1f}, Table 6: {_d(62.18, 55.65):+.1f}"),
}
"""Per claim key (cftlib.report.claims: a world split, or at paper scale a benchmark), the paper's figure for the
same comparison."""
