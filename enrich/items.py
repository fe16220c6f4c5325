"""One output row per item: the lists of the fields that explode, zipped, as rows.

A field that explodes gives each answered row one output row per item of its list; the row's
other columns repeat, and ``_item`` numbers the items from 0. Several exploding fields of one
call are zipped (item i of each goes in row i, as polars explodes several columns), so their
lists must be of one length: ``zip_items`` says so when they are not, and that row fails.

    values = zip_items(("Acme", ["a@x.io", "b@x.io"]), (1,), ("company", "contact"))
    # ("Acme", ["a@x.io", "b@x.io"]); a str is the message of lists of different lengths
    exploded = explode_rows([(*values, 200, None)], (1,))
    exploded.rows    # [("Acme", "a@x.io", 200, None), ("Acme", "b@x.io", 200, None)]
    exploded.take    # [0, 0]: the input row each output row repeats
    exploded.items   # [0, 1]

What an exploding value counts as: a list is its items, a null (a path that is missing) no item,
and anything else (a scalar, an object) one item. A row with no item, and a row that has no
answer (failed, skipped), stays one row, with null in the exploding columns and in ``_item``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


def items_of(value: Any) -> list[Any]:
    """An exploding field's value as its items: a list as it is, a null as none, anything else as one."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def zip_items(values: Sequence[Any], positions: Sequence[int], names: Sequence[str]) -> tuple[Any, ...] | str:
    """An answered row's field values with each exploding one (at ``positions``) as its list of items,
    or, when those lists differ in length, the row's error (naming each field's count)."""
    out = list(values)
    for i in positions:
        out[i] = items_of(out[i])
    if len(positions) > 1:
        lengths = [len(out[i]) for i in positions]
        if len(set(lengths)) > 1:
            counts = ", ".join(f"{names[i]} {n}" for i, n in zip(positions, lengths, strict=True))
            return (
                f"the exploded fields have lists of different lengths ({counts} items): they are zipped item by "
                "item, so each must have as many. Explode only one of them, or give each its own config."
            )
    return tuple(out)


class Exploded(NamedTuple):
    """A batch's rows after exploding: the output rows, the input row each repeats, its item number."""

    rows: list[tuple[Any, ...]]
    take: list[int]  # index, in the batch, of the input row each output row comes from
    items: list[int | None]  # the item's number (from 0); None: the row holds no item


def explode_rows(rows: Sequence[tuple[Any, ...]], positions: Sequence[int]) -> Exploded:
    """One output row per item of each row's exploding values (at ``positions``, lists as
    ``zip_items`` makes them); a row whose values there are not lists (no answer), or are empty
    lists, stays one row with nulls there. Order: input order, then item order."""
    out: list[tuple[Any, ...]] = []
    take: list[int] = []
    items: list[int | None] = []
    first = positions[0]
    for index, row in enumerate(rows):
        lists = row[first]
        if type(lists) is not list or not lists:
            if lists is not None:  # an answer with no item: its exploding columns are empty
                row = tuple(None if i in positions else v for i, v in enumerate(row))
            out.append(row)
            take.append(index)
            items.append(None)
            continue
        columns = [row[i] for i in positions]
        for number, item in enumerate(zip(*columns, strict=True)):
            cells = list(row)
            for i, value in zip(positions, item, strict=True):
                cells[i] = value
            out.append(tuple(cells))
            take.append(index)
            items.append(number)
    return Exploded(out, take, items)
