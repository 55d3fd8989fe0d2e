"""Inject fast weights (a context) into a text env's observations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from fst_env.context import render_context

#: The two ways a context reaches the model.
MODES: tuple[str, ...] = ("prepend", "system")

#: Default text between the rendered context and the observation in ``prepend`` mode.
DEFAULT_SEPARATOR = "\n\n"


def _render(context: str | Mapping[str, str]) -> str:
    """The text of a context: a str as is (stripped), a mapping through :func:`fst_env.context.render_context`."""
    if isinstance(context, str):
        return context.strip()
    if not isinstance(context, Mapping):
        raise TypeError(f"ContextInjection: context must be a str or a dict[str, str], got {type(context).__name__}")
    for name, text in context.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise TypeError("ContextInjection: a context dict maps str names to str texts, got "
                            f"{name!r}: {type(text).__name__}")
    return render_context(dict(context))


class ContextInjection(gym.Wrapper[str, str, str, str], gym.utils.RecordConstructorArgs):
    """Puts the agent's fast weights (a text context) in front of the model on every observation.

    ``context`` is a str, or a dict of named components (``{"instructions": ..., "notes": ...}``) rendered by
    :func:`fst_env.context.render_context`: ``instructions`` first, then ``notes``, then any other component in
    name order, each non-empty one after ``instructions`` headed ``"<Name>:\\n"``, blocks joined by a blank line.

    - ``mode="prepend"``: every observation (the reset prompt and every step's observation) becomes
      ``rendered_context + separator + observation`` (``separator`` defaults to a blank line, ``"\\n\\n"``).
    - ``mode="system"``: observations are unchanged and the rendered context goes to ``info["system_prompt"]``
      on reset and on every step, for a chat formatter (:class:`ChatFormat`) to put in the system message.
      A ``system_prompt`` already in the inner env's info is kept, followed by this context after a blank line.

    :meth:`set_context` swaps the context; it takes effect at the next ``reset`` so that one episode always
    sees one context. An empty context (``""``, ``{}`` or only blank components) makes the wrapper the identity.
    """

    def __init__(self, env: gym.Env[str, str], context: str | Mapping[str, str] = "", *, mode: str = "prepend",
                 separator: str = DEFAULT_SEPARATOR) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, context=context, mode=mode, separator=separator)
        gym.Wrapper.__init__(self, env)
        if mode not in MODES:
            raise ValueError(f"ContextInjection: mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(separator, str):
            raise TypeError(f"ContextInjection: separator must be a str, got {type(separator).__name__}")
        self.mode = mode
        self.separator = separator
        self._next_text = _render(context)
        self._next_context: str | dict[str, str] = context if isinstance(context, str) else dict(context)
        # The context of the running episode; fixed at reset so set_context never changes an episode midway.
        self._episode_text = ""

    @property
    def context(self) -> str | dict[str, str]:
        """The context the next episode will see (as given to the constructor or :meth:`set_context`)."""
        return self._next_context if isinstance(self._next_context, str) else dict(self._next_context)

    @property
    def rendered_context(self) -> str:
        """The text the next episode will see."""
        return self._next_text

    def set_context(self, context: str | Mapping[str, str]) -> None:
        """Use ``context`` from the next ``reset`` on (the running episode keeps its context)."""
        self._next_text = _render(context)
        self._next_context = context if isinstance(context, str) else dict(context)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode_text = self._next_text
        return self._inject(obs, info)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs, info = self._inject(obs, info)
        return obs, reward, terminated, truncated, info

    def _inject(self, obs: str, info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        text = self._episode_text
        if not text:
            return obs, info
        if self.mode == "prepend":
            return f"{text}{self.separator}{obs}", info
        info = dict(info)
        inner = info.get("system_prompt")
        info["system_prompt"] = f"{inner}\n\n{text}" if isinstance(inner, str) and inner.strip() else text
        return obs, info
