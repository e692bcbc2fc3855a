"""Reading the JSON files users hand us, with errors that name the file."""

import json
from pathlib import Path
from typing import Any


def read_json(path, *, missing: str = "no such file", error: type[Exception] = ValueError) -> Any:
    """Parsed JSON of ``path``; FileNotFoundError (with ``missing``) or ``error`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {missing}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid UTF-8 JSON ({err})") from None
