"""Training examples and the chat formats they are rendered from."""

import re
from dataclasses import dataclass
from typing import Any

from .errors import DataError

ROLE_PREFIX = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}
# HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ...", a marker before every turn.
HH_TURN = re.compile(r"\n\nHuman: |\n\nAssistant: ")
HH_ROLE = {"\n\nHuman: ": "user", "\n\nAssistant: ": "assistant"}


@dataclass(frozen=True)
class Example:
    """A document. ``loss_spans``: half-open character spans of ``text`` that carry loss; None = all."""

    text: str
    loss_spans: list[tuple[int, int]] | None = None


def render_chat(messages: Any, assistant_only: bool = True) -> Example:
    """Render ``[{"role", "content"}, ...]`` as ``User: ...\\nAssistant: ...\\n`` (``System: ...\\n``).

    With ``assistant_only`` the loss covers each assistant reply with the space before it and the
    newline after it (the model learns to answer after ``Assistant:``, which is how chat prompts end,
    and to end its turn), never the role names or the other turns.
    """
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list of {role, content} objects")
    parts, spans, pos = [], [], 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"messages[{i}] must be an object with a string 'content'")
        role = message.get("role")
        if role not in ROLE_PREFIX:
            raise DataError(f"messages[{i}] has unknown role {role!r} (expected system, user or assistant)")
        turn = f"{ROLE_PREFIX[role]}{message['content']}\n"
        if role == "assistant":
            spans.append((pos + len(ROLE_PREFIX[role]) - 1, pos + len(turn)))  # from the space on
        parts.append(turn)
        pos += len(turn)
    return Example("".join(parts), spans if assistant_only else None)


def parse_hh(text: Any) -> list[dict]:
    """Split an HH-RLHF transcript into ``[{"role": "user"|"assistant", "content"}, ...]``.

    Turn contents are kept verbatim; the transcript must open with ``\\n\\nHuman: `` so that no text is
    dropped before the first turn.
    """
    if not isinstance(text, str) or not text.startswith("\n\nHuman: "):
        raise DataError("HH transcript must be a string starting with '\\n\\nHuman: '")
    markers = [m.group() for m in HH_TURN.finditer(text)]
    contents = HH_TURN.split(text)[1:]  # [0] is the empty text before the first marker
    return [{"role": HH_ROLE[m], "content": c} for m, c in zip(markers, contents)]


def row_to_example(row: Any, text_field: str = "text", assistant_only: bool = True) -> Example:
    """One dataset row, its format detected by its fields: ``text_field`` (plain text, the C4 format),
    ``messages`` (UltraChat), ``chosen`` (HH-RLHF) or ``question`` + ``answer`` (gsm8k).

    A field whose value is None counts as absent: ``datasets`` fills missing keys with None.
    """
    if not isinstance(row, dict):
        raise DataError(f"row is a JSON {type(row).__name__}, not an object")
    if row.get(text_field) is not None:
        if not isinstance(row[text_field], str):
            raise DataError(f"field {text_field!r} is a {type(row[text_field]).__name__}, not a string")
        return Example(row[text_field], None)
    if row.get("messages") is not None:
        return render_chat(row["messages"], assistant_only)
    if row.get("chosen") is not None:
        return render_chat(parse_hh(row["chosen"]), assistant_only)
    if row.get("question") is not None and row.get("answer") is not None:
        return render_chat([{"role": "user", "content": row["question"]},
                            {"role": "assistant", "content": row["answer"]}], assistant_only)
    raise DataError(f"row lacks the field {text_field!r} (nor has 'messages', 'chosen' or 'question'+'answer'); "
                    f"its fields: {', '.join(sorted(k for k, v in row.items() if v is not None)) or 'none'}")
