"""Grammars of image names and tags, as the distribution reference defines them.

An image name is one or more lowercase components separated by ``/``; a
component joins alphanumeric runs with ``.``, ``_``, ``__`` or dashes. A tag
is at most 128 characters of letters, digits, ``_``, ``.`` and ``-``, not
starting with ``.`` or ``-``.
"""

from __future__ import annotations

import re

NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_NAME = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def is_image_name(value: object) -> bool:
    return isinstance(value, str) and bool(IMAGE_NAME.fullmatch(value))
