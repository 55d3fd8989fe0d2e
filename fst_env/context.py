"""Fast weights as text: a context is a dict of named components rendered into the prompt."""

from __future__ import annotations

#: Fast weights: named text components (at least ``instructions``; optionally ``notes``).
Context = dict[str, str]


def render_context(context: Context) -> str:
    """The text a context contributes to the prompt, in a stable order (instructions first, then notes)."""
    order = ["instructions", "notes", *sorted(k for k in context if k not in ("instructions", "notes"))]
    parts = []
    for name in order:
        text = context.get(name, "").strip()
        if text:
            parts.append(text if name == "instructions" else f"{name.capitalize()}:\n{text}")
    return "\n\n".join(parts)
