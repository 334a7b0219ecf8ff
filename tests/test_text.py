"""Text from users' files shown inert (ned_ray/text.py) and error lines that stay one line."""

from __future__ import annotations

from ned_ray.cli import run_command
from ned_ray.errors import InputError
from ned_ray.text import printable


def test_printable_escapes_what_a_terminal_or_parser_would_act_on():
    assert printable("plain id é 画像 $x$") == "plain id é 画像 $x$"  # printable text is kept as it is
    assert printable("a\x00b\x1b[31mc\nd\te\u202ef\x7f") == "a\\x00b\\x1b[31mc\\nd\\te\\u202ef\\x7f"
    assert printable(3) == "3"


def test_an_error_quoting_an_id_stays_one_inert_line(capsys):
    def refused():
        raise InputError("image 'evil\x1b]0;title\x07\nsecond line' is bad")

    assert run_command("ned-ray x", refused) == 2
    assert capsys.readouterr().err == "ned-ray x: error: image 'evil\\x1b]0;title\\x07\\nsecond line' is bad\n"
