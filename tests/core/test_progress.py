"""Long steps report progress: a bar interactively, one summary line otherwise, its time scrubbed from
executed notebooks so they stay byte-identical."""

import nbformat

from cftlib.core import progress
from cftlib.stages import nbrun


def test_summary_counts_and_prints_one_line(capsys):
    items = list(progress.bar(range(4), desc="evaluate", unit="runs"))
    assert items == [0, 1, 2, 3]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("[done] evaluate: 4 runs in ") and out[0].endswith(" s")
    steps = progress.bar(total=10, initial=4, desc="vit/cft/seed0", unit="steps")
    steps.update()
    steps.set_postfix(loss="0.1")
    steps.close()
    steps.close()  # once only
    assert capsys.readouterr().out.startswith("[done] vit/cft/seed0: 5 steps in ")


def test_interactive_bar_and_other_ranks_print_no_summary(capsys):
    assert list(progress.bar(range(2), desc="x", progress=True)) == [0, 1]
    assert list(progress.bar(range(2), desc="x", rank=1)) == [0, 1]
    assert "[done]" not in capsys.readouterr().out


def test_scrub_drops_the_seconds_of_summaries_only():
    nb = nbformat.v4.new_notebook()
    text = "[done] fine-tuning: 27 runs in 812 s\nran in 3 s\n"
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)])]
    assert nbrun.scrub(nb).cells[0].outputs[0].text == "[done] fine-tuning: 27 runs\nran in 3 s\n"
