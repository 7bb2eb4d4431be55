"""`assay results --write-into README.md`: the README's table is the metrics', rewritten in place
between its two marker lines, and a file without them is refused untouched."""

from __future__ import annotations

import pytest

from assay.results import END, START, Result, ResultsError, markdown, write_into


def _rows():
    return [
        Result("digits-mlp", "test/acc", "max", 0.97, "logistic regression", 0.96, 0.01, True),
        Result("elecdemand-gru", "test/rmse", "min", 0.39, "ridge", 0.28, -0.11, False),
        Result("mnist-gan", "test/fid", "min", 12.0, None, None, None, None),
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
    assert lines[2].split(" | ")[-1] == "yes |"  # champion: what `register` decided
    assert lines[3].endswith("| -0.1100 | no |")
    assert lines[4].endswith("| none |  |  |  |")  # no baseline, not registered
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
