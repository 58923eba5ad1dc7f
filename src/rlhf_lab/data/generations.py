"""Reading a ``generations.jsonl`` (what ``rlhf-lab generate`` writes): one row per prompt with its responses.

Row: ``{"messages": [...] or "prompt": str, "responses": [str], ...}``; a row with only ``prompt`` gets
``messages = [{"role": "user", "content": prompt}]``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_lab.errors import UserError


def read_generations(path: str) -> list[dict]:
    """Rows with ``responses`` and ``messages`` (or ``prompt``); bad lines are errors naming file:line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    rows = []
    with open(p, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("responses"), list):
                raise UserError(f"{path}:{line_no}: expected an object with a 'responses' list")
            if not all(isinstance(r, str) for r in row["responses"]):
                raise UserError(f"{path}:{line_no}: 'responses' must be strings")
            messages = row.get("messages")
            if messages is None and isinstance(row.get("prompt"), str):
                row["messages"] = [{"role": "user", "content": row["prompt"]}]
            elif not (isinstance(messages, list) and messages):
                raise UserError(f"{path}:{line_no}: expected 'messages' or a 'prompt' string")
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows
