"""The examples of the how-to guides run (docs/examples/testing_howto.py holds those of
docs/howto/testing.md), and the code shown in the guides is the code that runs."""

from __future__ import annotations

from docs.examples.testing_howto import *  # noqa: F403  (its test_* functions and fixture)
from tests.support.excerpts import ROOT, check_excerpts


def test_the_code_in_the_testing_guide_is_the_tested_code() -> None:
    check_excerpts("howto/testing.md", "python",
                   {"test_board.py": ROOT / "docs/examples/testing_howto.py"})
