"""`assay results --write-into README.md`: the README's table is the metrics', rewritten in place
between its two marker lines, and a file without them is refused untouched."""

from __future__ import annotations

import pytest

from assay.results import END, START, Result, ResultsError, markdown, write_into


def _rows():
    return [
        Result("digits-mlp", "test/acc", "max", 0.97, "logistic regression", 0.96, 0.01, True),
        Result("elecdemand-gru", "test/rmse", "min", 0.39, "ridge", 0.28, -0.11, False),
        Result("mnist-gan", "test/fid", "min", 12.0, None, None, None, None, "2026-12-01"),
    ]


def test_the_table_replaces_only_what_lies_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{START}\n| old | table |\n{END}\n\nafter\n")
    readme.chmod(0o644)
    table = markdown(_rows())
    write_into(readme, table)
    text = readme.read_text()
    assert text == f"# Title\n\nbefore\n\n{START}\n{table}{END}\n\nafter\n"
    lines = table.splitlines()
    assert lines[2].split(" | ")[-2] == "yes"  # champion: what `register` decided
    assert lines[3].endswith("| -0.1100 | no |  |")
    assert lines[4].endswith("| none |  |  |  | 2026-12-01 |")  # no baseline, not registered
    assert readme.stat().st_mode & 0o777 == 0o644
    write_into(readme, table)  # again: the same file
    assert readme.read_text() == text


@pytest.mark.parametrize(
    "body",
    [
        "no markers\n",
        f"{START}\nonly the start\n",
        f"{END}\n{START}\n",
        f"{START}\n{START}\n{END}\n",
    ],
)
def test_a_file_without_one_pair_of_markers_is_refused_and_left_alone(tmp_path, body):
    readme = tmp_path / "README.md"
    readme.write_text(body)
    with pytest.raises(ResultsError, match="needs one line"):
        write_into(readme, markdown(_rows()))
    assert readme.read_text() == body


def test_keep_rows_updates_the_experiments_scored_here_and_keeps_the_others(tmp_path):
    """A project that re-ran some stages rewrites their rows only: the others stay as they were
    (a row of the older, seven-column table gets an empty date), new experiments follow."""
    old = (
        "| experiment | test metric | model | classical baseline (same split) | baseline | lift "
        "| champion |\n|---|---|---:|---|---:|---:|:-:|\n"
        "| digits-mlp | acc (higher is better) | 0.9500 | lr | 0.9600 | -0.0100 | no |\n"
        "| shuttle-vae | roc_auc (higher is better) | 0.9991 | iforest | 0.9986 | +0.0005 | yes |\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{START}\n{old}{END}\nafter\n")
    now = [
        Result("digits-mlp", "test/acc", "max", 0.97, "lr", 0.96, 0.01, True, "2026-12-07"),
        Result("elecdemand-gru", "test/rmse", "min", 0.21, "ridge", 0.25, 0.04, True, "2026-12-07"),
    ]
    write_into(readme, markdown(now), keep_rows=True)
    body = readme.read_text().split(START)[1].split(END)[0].strip().splitlines()
    assert body[0].endswith("| champion | scored |")
    assert [line.split(" | ")[0] for line in body[2:]] == [
        "| digits-mlp",
        "| shuttle-vae",
        "| elecdemand-gru",
    ]
    assert body[2].endswith("| +0.0100 | yes | 2026-12-07 |")  # replaced
    assert body[3] == old.splitlines()[3] + " |"  # kept, its date unknown
    assert all(line.count("|") == body[0].count("|") for line in body)
    write_into(readme, markdown(now))  # without keep_rows: the table is what was scored here
    body = readme.read_text().split(START)[1].split(END)[0].strip().splitlines()
    assert len(body) == 4 and "shuttle-vae" not in "".join(body)
