"""The kanban board's pure logic (examples/board/model.py): validating and applying ops,
versions, snapshots; and the page's copy of it (static/board_model.js, run under Node by
tests/browser/board_model.mjs) agreeing with it. No sockets, no browser."""

from __future__ import annotations

import json
import random
import subprocess
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.board.model import (
    COLUMNS,
    MAX_CARDS,
    MAX_TEXT,
    Board,
    OpError,
    apply_normalized,
    clean_text,
)
from tests.support.server import ROOT
from tests.test_board_browser import node_executable


def texts(board: Board) -> dict[str, list[str]]:
    return {col: [c["text"] for c in cards] for col, cards in board.columns.items()}


def board_with(**columns: list[str]) -> Board:
    board = Board("u1")
    for col, items in columns.items():
        for text in items:
            board.apply({"type": "add", "column": col, "text": text})
    return board


def applied(board: Board, op: dict[str, Any]) -> dict[str, Any]:
    """The normalized op of a change that must change the board."""
    change = board.apply(op)
    assert change is not None
    return change


def refused(board: Board, op: Any) -> str:
    before = board.snapshot()
    with pytest.raises(OpError) as info:
        board.apply(op)
    assert board.snapshot() == before, "a refused op changed the board"
    return info.value.reason


# -- add ---------------------------------------------------------------------------------------


def test_add_appends_with_new_ids_and_counts_versions() -> None:
    board = Board("u1")
    assert board.apply({"type": "add", "column": "todo", "text": "  one \r\n two  "}) == \
        {"type": "add", "id": "c1", "column": "todo", "index": 0, "text": "one \n two"}
    assert applied(board, {"type": "add", "column": "todo", "text": "three"})["id"] == "c2"
    assert board.apply({"type": "add", "column": "todo", "text": "first", "index": 0}) == \
        {"type": "add", "id": "c3", "column": "todo", "index": 0, "text": "first"}
    # an index past the end is the end
    assert applied(board, {"type": "add", "column": "done", "text": "x", "index": 99})["index"] == 0
    assert texts(board) == {"todo": ["first", "one \n two", "three"], "doing": [],
                            "done": ["x"]}
    assert board.version == 4


@pytest.mark.parametrize(("op", "reason"), [
    ({"type": "add", "column": "todo"}, "text must be a string"),
    ({"type": "add", "column": "todo", "text": 5}, "text must be a string"),
    ({"type": "add", "column": "todo", "text": " \n "}, "text is empty"),
    ({"type": "add", "column": "todo", "text": "x" * (MAX_TEXT + 1)},
     f"text is longer than {MAX_TEXT} characters"),
    ({"type": "add", "column": "todo", "text": "a\x00b"}, "text cannot contain control characters"),
    ({"type": "add", "column": "todo", "text": "a\tb"}, "text cannot contain control characters"),
    ({"type": "add", "column": "nope", "text": "x"},
     "unknown column 'nope' (columns: todo, doing, done)"),
    ({"type": "add", "column": ["todo"], "text": "x"},
     "unknown column list (columns: todo, doing, done)"),
    ({"type": "add", "text": "x"}, "unknown column NoneType (columns: todo, doing, done)"),
    ({"type": "add", "column": "todo", "text": "x", "index": -1},
     "index must be a non-negative integer"),
    ({"type": "add", "column": "todo", "text": "x", "index": "0"},
     "index must be a non-negative integer"),
    ({"type": "add", "column": "todo", "text": "x", "index": 1.0},
     "index must be a non-negative integer"),
    ({"type": "add", "column": "todo", "text": "x", "index": True},
     "index must be a non-negative integer"),
    ({"type": "remove", "id": "c1"}, "unknown op type 'remove' (add, edit, move, delete)"),
    ({"column": "todo", "text": "x"}, "unknown op type NoneType (add, edit, move, delete)"),
    ([], "an op must be an object"),
    ("add", "an op must be an object"),
])
def test_bad_ops_are_refused_with_a_reason(op: Any, reason: str) -> None:
    board = board_with(todo=["a"])
    assert refused(board, op) == reason


def test_the_longest_text_is_accepted_and_newlines_are_kept() -> None:
    assert clean_text("x" * MAX_TEXT) == "x" * MAX_TEXT
    assert clean_text(" a\nb ") == "a\nb"
    assert clean_text("émoji 👋 <b>") == "émoji 👋 <b>"


def test_a_full_board_refuses_new_cards() -> None:
    board = Board("u1")
    for i in range(MAX_CARDS):
        board.apply({"type": "add", "column": COLUMNS[i % 3], "text": str(i)})
    assert refused(board, {"type": "add", "column": "todo", "text": "one more"}) == \
        f"the board is full ({MAX_CARDS} cards)"
    board.apply({"type": "delete", "id": "c1"})
    assert applied(board, {"type": "add", "column": "todo", "text": "fits"})["id"] == \
        f"c{MAX_CARDS + 1}"


# -- edit, move, delete ---------------------------------------------------------------------


def test_edit() -> None:
    board = board_with(todo=["a", "b"])
    assert board.apply({"type": "edit", "id": "c2", "text": " B "}) == \
        {"type": "edit", "id": "c2", "text": "B"}
    assert texts(board)["todo"] == ["a", "B"]
    assert board.version == 3
    # the same text again changes nothing and is no version
    assert board.apply({"type": "edit", "id": "c2", "text": "B"}) is None
    assert board.version == 3
    assert refused(board, {"type": "edit", "id": "c9", "text": "x"}) == \
        "unknown card 'c9' (deleted?)"
    assert refused(board, {"type": "edit", "id": "c1", "text": ""}) == "text is empty"
    assert refused(board, {"type": "edit", "id": 1, "text": "x"}) == "id must be a string"
    assert refused(board, {"type": "edit", "text": "x"}) == "id must be a string"


def test_move_between_and_within_columns() -> None:
    board = board_with(todo=["a", "b", "c"], done=["d"])
    # to another column: at the end by default, at an index, clamped
    assert board.apply({"type": "move", "id": "c1", "column": "doing"}) == \
        {"type": "move", "id": "c1", "column": "doing", "index": 0}
    assert board.apply({"type": "move", "id": "c2", "column": "done", "index": 0}) == \
        {"type": "move", "id": "c2", "column": "done", "index": 0}
    assert board.apply({"type": "move", "id": "c3", "column": "done", "index": 50}) == \
        {"type": "move", "id": "c3", "column": "done", "index": 2}
    assert texts(board) == {"todo": [], "doing": ["a"], "done": ["b", "d", "c"]}
    # within a column: the index is the card's position once moved
    assert applied(board, {"type": "move", "id": "c2", "column": "done", "index": 2})["index"] == 2
    assert texts(board)["done"] == ["d", "c", "b"]
    assert applied(board, {"type": "move", "id": "c2", "column": "done", "index": 0})["index"] == 0
    assert texts(board)["done"] == ["b", "d", "c"]
    # to where it is: nothing changes, no version
    version = board.version
    assert board.apply({"type": "move", "id": "c3", "column": "done"}) is None
    assert board.apply({"type": "move", "id": "c2", "column": "done", "index": 0}) is None
    assert board.version == version
    assert refused(board, {"type": "move", "id": "c2", "column": "later"}) == \
        "unknown column 'later' (columns: todo, doing, done)"
    assert refused(board, {"type": "move", "id": "c42", "column": "todo"}) == \
        "unknown card 'c42' (deleted?)"
    assert refused(board, {"type": "move", "id": "c2", "column": "todo", "index": -2}) == \
        "index must be a non-negative integer"


def test_delete() -> None:
    board = board_with(todo=["a", "b"])
    assert board.apply({"type": "delete", "id": "c1"}) == {"type": "delete", "id": "c1"}
    assert texts(board)["todo"] == ["b"]
    assert refused(board, {"type": "delete", "id": "c1"}) == "unknown card 'c1' (deleted?)"
    assert refused(board, {"type": "delete", "id": None}) == "id must be a string"
    # ids are never reused
    assert applied(board, {"type": "add", "column": "todo", "text": "c"})["id"] == "c3"


def test_a_long_unknown_value_is_cut_short_in_the_reason() -> None:
    board = Board("u1")
    reason = refused(board, {"type": "delete", "id": "x" * 1000})
    assert len(reason) < 80
    assert len(refused(board, {"type": "add", "column": "y" * 1000, "text": "t"})) < 100


# -- the client form, snapshots -------------------------------------------------------------


def test_to_client_and_snapshots() -> None:
    board = board_with(todo=["a"], doing=["b"])
    assert board.to_client() == {
        "uid": "u1", "version": 2,
        "columns": [
            {"id": "todo", "title": "To do", "cards": [{"id": "c1", "text": "a"}]},
            {"id": "doing", "title": "Doing", "cards": [{"id": "c2", "text": "b"}]},
            {"id": "done", "title": "Done", "cards": []},
        ],
    }
    # a snapshot survives msgpack (how rooms store it) and restores the same board
    data = msgpack.unpackb(msgpack.packb(board.snapshot()), raw=False)
    again = Board.restore(data)
    assert again.to_client() == board.to_client()
    assert applied(again, {"type": "add", "column": "done", "text": "c"})["id"] == "c3"
    with pytest.raises(ValueError, match="unknown board snapshot format"):
        Board.restore({**data, "format": 99})


# -- properties -------------------------------------------------------------------------------

TEXTS = st.one_of(st.sampled_from(["a", "b", " c ", "", "x" * (MAX_TEXT + 1), "\x01"]),
                  st.text(max_size=8))
IDS = st.one_of(st.sampled_from([f"c{i}" for i in range(1, 12)]), st.none(), st.integers())
INDEXES = st.one_of(st.none(), st.integers(min_value=-2, max_value=12))
COLUMN_NAMES = st.sampled_from([*COLUMNS, "nope"])
OPS = st.one_of(
    st.fixed_dictionaries({"type": st.just("add"), "column": COLUMN_NAMES, "text": TEXTS,
                           "index": INDEXES}),
    st.fixed_dictionaries({"type": st.just("edit"), "id": IDS, "text": TEXTS}),
    st.fixed_dictionaries({"type": st.just("move"), "id": IDS, "column": COLUMN_NAMES,
                           "index": INDEXES}),
    st.fixed_dictionaries({"type": st.just("delete"), "id": IDS}),
    st.just({"type": "shuffle"}),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_any_op_sequence_keeps_a_replica_equal(ops: list[dict[str, Any]]) -> None:
    """A replica that applies only the normalized ops stays equal to the board; refused ops
    change nothing; versions count the changes; card ids stay unique."""
    board = Board("u1")
    replica = Board("u1")
    changes = 0
    for op in ops:
        before = board.snapshot()
        try:
            change = board.apply(op)
        except OpError:
            assert board.snapshot() == before
            continue
        if change is None:
            assert board.snapshot() == before
            continue
        changes += 1
        apply_normalized(replica, change)
        assert replica.to_client() == board.to_client()
    assert board.version == changes
    ids = [c["id"] for cards in board.columns.values() for c in cards]
    assert len(ids) == len(set(ids))


# -- the page's copy (static/board_model.js) agrees ---------------------------------------------


def random_history(seed: int, steps: int = 150) -> tuple[list[dict[str, Any]],
                                                           list[dict[str, Any]]]:
    """The boards at versions 0..n and the change events, as the room would broadcast them."""
    rng = random.Random(seed)
    board = Board(f"uid-{seed}")
    boards = [board.to_client()]
    events: list[dict[str, Any]] = []
    while len(events) < steps:
        ids = [c["id"] for cards in board.columns.values() for c in cards]
        kind = rng.choice(["add", "add", "move", "move", "edit", "delete"] if ids else ["add"])
        op: dict[str, Any] = {"type": kind}
        if kind != "add":
            op["id"] = rng.choice(ids)
        if kind in ("add", "move"):
            op["column"] = rng.choice(COLUMNS)
            if rng.random() < 0.5:
                op["index"] = rng.randrange(0, 8)
        if kind in ("add", "edit"):
            op["text"] = f"text {rng.randrange(1000)} é👋"
        change = board.apply(op)
        if change is None:
            continue
        events.append({"uid": board.uid, "version": board.version, "op": change, "by": "t"})
        boards.append(board.to_client())
    return boards, events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_page_model_agrees_with_the_room(seed: int) -> None:
    boards, events = random_history(seed)
    other = Board("another-uid")
    other.apply({"type": "add", "column": "done", "text": "elsewhere"})
    case = {"boards": boards, "events": events, "other": other.to_client(), "seed": seed}
    proc = subprocess.run([node_executable(), str(ROOT / "tests/browser/board_model.mjs")],
                          input=json.dumps(case), cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, detail
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is True, detail
    s = out["scenarios"]
    assert s["apply_in_order"] == {"wrong": []}
    assert s["sync_in_order"] == {"same": True, "fetches": 0, "pending": 0}
    late = s["sync_late_twice_lost"]
    assert (late["same"], late["pending"], late["fetching"]) == (True, 0, False), late
    assert late["dropped"] > 0 and late["fetches"] > 0, late  # the case did exercise gaps
    assert s["other_uid"] == {"same": True, "fetches": 1}
    assert s["offer"] == {"kept_newer": True, "took_newer": True}
