"""The kanban board as plain data: validating and applying ops, snapshots. Pure (no I/O).

A :class:`Board` has the fixed columns :data:`COLUMNS`, each an ordered list of cards
``{"id": "c17", "text": "..."}``, a ``version`` (the number of changes applied so far) and a
``uid`` (random, made when the board is created: a board that was lost and started again
empty has another uid, so clients never mistake its versions for the old board's).

:meth:`Board.apply` takes an op as a client sends it, checks all of it before changing
anything (a bad op raises :class:`OpError` with a reason, and the board is unchanged), applies
it and returns the *normalized* op: what happened, with every position spelled out, so that
applying it to an equal board (:func:`apply_normalized`, or ``applyOp`` in
``static/board_model.js``) gives an equal board. An op that would change nothing returns None
and does not count as a version.

Ops (client form → normalized form):

* ``{"type": "add", "column", "text", "index"?}`` → ``{"type": "add", "id", "column",
  "index", "text"}`` (``index`` defaults to the end of the column; larger is clamped);
* ``{"type": "edit", "id", "text"}`` → the same, text normalized;
* ``{"type": "move", "id", "column", "index"?}`` → ``{"type": "move", "id", "column",
  "index"}``, ``index`` being the card's position in the column once it is there (default:
  the end; larger is clamped);
* ``{"type": "delete", "id"}`` → the same.

Text is trimmed, ``\\r\\n`` becomes ``\\n``, and it must be 1..:data:`MAX_TEXT` characters with
no control characters other than newlines.
"""

from __future__ import annotations

import copy
import unicodedata
from typing import Any

COLUMNS = ("todo", "doing", "done")
COLUMN_TITLES = {"todo": "To do", "doing": "Doing", "done": "Done"}
MAX_TEXT = 500
MAX_CARDS = 500
#: Bumped if the snapshot's shape changes.
SNAPSHOT_FORMAT = 1

Card = dict[str, str]


class OpError(ValueError):
    """An op the board refuses; ``reason`` says why (it goes back to the client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def clean_text(value: Any) -> str:
    """The card text, normalized, or :class:`OpError`."""
    if not isinstance(value, str):
        raise OpError("text must be a string")
    text = value.replace("\r\n", "\n").strip()
    if not text:
        raise OpError("text is empty")
    if len(text) > MAX_TEXT:
        raise OpError(f"text is longer than {MAX_TEXT} characters")
    if any(ch != "\n" and unicodedata.category(ch) == "Cc" for ch in text):
        raise OpError("text cannot contain control characters")
    return text


def _column(value: Any) -> str:
    if not isinstance(value, str) or value not in COLUMNS:
        shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
        raise OpError(f"unknown column {shown} (columns: {', '.join(COLUMNS)})")
    return value


def _index(op: dict[str, Any]) -> int | None:
    value = op.get("index")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OpError("index must be a non-negative integer")
    return value


def _card_id(value: Any) -> str:
    if not isinstance(value, str):
        raise OpError("id must be a string")
    return value


class Board:
    """One board's state. Mutate it only with :meth:`apply` (or :func:`apply_normalized`)."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.version = 0
        self.next_id = 1
        self.columns: dict[str, list[Card]] = {col: [] for col in COLUMNS}

    # -- reading ---------------------------------------------------------------------------

    def find(self, card_id: str) -> tuple[str, int] | None:
        """``(column, index)`` of a card, or None."""
        for col, cards in self.columns.items():
            for i, card in enumerate(cards):
                if card["id"] == card_id:
                    return col, i
        return None

    @property
    def card_count(self) -> int:
        return sum(len(cards) for cards in self.columns.values())

    def to_client(self) -> dict[str, Any]:
        """The whole board as the clients get it (JSON- and msgpack-able)."""
        return {
            "uid": self.uid,
            "version": self.version,
            "columns": [{"id": col, "title": COLUMN_TITLES[col],
                         "cards": [dict(card) for card in self.columns[col]]}
                        for col in COLUMNS],
        }

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "uid": self.uid,
            "version": self.version,
            "next_id": self.next_id,
            "columns": {col: [[c["id"], c["text"]] for c in cards]
                        for col, cards in self.columns.items()},
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Board:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown board snapshot format {data.get('format')!r}")
        board = cls(str(data["uid"]))
        board.version = int(data["version"])
        board.next_id = int(data["next_id"])
        for col in COLUMNS:
            board.columns[col] = [{"id": str(i), "text": str(t)}
                                  for i, t in data["columns"].get(col, [])]
        return board

    def copy(self) -> Board:
        return copy.deepcopy(self)

    # -- changing --------------------------------------------------------------------------

    def apply(self, op: Any) -> dict[str, Any] | None:
        """Validate and apply a client op; the normalized op, or None if nothing changed.

        Raises :class:`OpError` (and changes nothing) if the op is not valid.
        """
        if not isinstance(op, dict):
            raise OpError("an op must be an object")
        kind = op.get("type")
        change: dict[str, Any] | None
        if kind == "add":
            change = self._check_add(op)
        elif kind == "edit":
            change = self._check_edit(op)
        elif kind == "move":
            change = self._check_move(op)
        elif kind == "delete":
            change = self._check_delete(op)
        else:
            shown = repr(kind)[:40] if isinstance(kind, str) else type(kind).__name__
            raise OpError(f"unknown op type {shown} (add, edit, move, delete)")
        if change is None:
            return None
        if kind == "add":
            self.next_id += 1
        apply_normalized(self, change)
        return change

    def _where(self, op: dict[str, Any]) -> tuple[str, str, int]:
        card_id = _card_id(op.get("id"))
        where = self.find(card_id)
        if where is None:
            raise OpError(f"unknown card {card_id[:40]!r} (deleted?)")
        return card_id, *where

    def _check_add(self, op: dict[str, Any]) -> dict[str, Any]:
        col = _column(op.get("column"))
        text = clean_text(op.get("text"))
        index = _index(op)
        if self.card_count >= MAX_CARDS:
            raise OpError(f"the board is full ({MAX_CARDS} cards)")
        size = len(self.columns[col])
        index = size if index is None else min(index, size)
        return {"type": "add", "id": f"c{self.next_id}", "column": col, "index": index,
                "text": text}

    def _check_edit(self, op: dict[str, Any]) -> dict[str, Any] | None:
        card_id, col, i = self._where(op)
        text = clean_text(op.get("text"))
        if self.columns[col][i]["text"] == text:
            return None
        return {"type": "edit", "id": card_id, "text": text}

    def _check_move(self, op: dict[str, Any]) -> dict[str, Any] | None:
        card_id, src, i = self._where(op)
        dest = _column(op.get("column"))
        index = _index(op)
        size = len(self.columns[dest]) - (1 if dest == src else 0)
        index = size if index is None else min(index, size)
        if dest == src and index == i:
            return None
        return {"type": "move", "id": card_id, "column": dest, "index": index}

    def _check_delete(self, op: dict[str, Any]) -> dict[str, Any]:
        card_id, _col, _i = self._where(op)
        return {"type": "delete", "id": card_id}


def apply_normalized(board: Board, change: dict[str, Any]) -> None:
    """Apply a normalized op (as :meth:`Board.apply` returns it) and count a version.

    Clients do the same in ``static/board_model.js``.
    """
    kind = change["type"]
    if kind == "add":
        board.columns[change["column"]].insert(change["index"],
                                               {"id": change["id"], "text": change["text"]})
    else:
        where = board.find(change["id"])
        if where is None:
            raise OpError(f"unknown card {change['id']!r}")
        col, i = where
        if kind == "edit":
            board.columns[col][i]["text"] = change["text"]
        elif kind == "move":
            card = board.columns[col].pop(i)
            board.columns[change["column"]].insert(change["index"], card)
        elif kind == "delete":
            del board.columns[col][i]
        else:
            raise OpError(f"unknown op type {kind!r}")
    board.version += 1
