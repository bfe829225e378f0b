"""README's results block is generated from the committed reports (cftlib.report.readme): the numbers it quotes
are the ones in `reports/` and `plots/`."""

from pathlib import Path

import pytest

from cftlib.report import readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quotes_the_committed_reports():
    assert readme.main(["--root", str(ROOT), "--check"]) == 0, "run: python -m cftlib.report.readme"


def test_the_block_is_replaced_between_its_markers_and_a_missing_marker_is_named():
    text = f"intro\n{readme.START}\nold numbers\n{readme.END}\noutro\n"
    assert readme.replace(text, "NEW") == "intro\nNEW\noutro\n"
    with pytest.raises(ValueError, match="README.md: expected one"):
        readme.replace("no markers", "NEW")
