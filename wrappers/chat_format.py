"""Render a text env's observations with a tokenizer's chat template."""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym

from fst_env.core import TextSpace


class ChatTokenizer(Protocol):
    """What :class:`ChatFormat` needs from a tokenizer (a ``transformers`` tokenizer has it)."""

    chat_template: Any

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


class ChatFormat(gym.Wrapper[str, str, str, str], gym.utils.RecordConstructorArgs):
    """Turns a text env's observations into chat-template text a causal LM can continue.

    The wrapper keeps the current episode's conversation as a list of ``{"role", "content"}`` messages
    (:attr:`messages`, also copied into ``info["messages"]``); ``reset`` starts a new one:

    - ``reset``: ``[system?] + [user: prompt]``;
    - ``step(action)``: appends ``assistant: action`` and ``user: next observation`` (on the final step too, where
      the observation is the env's feedback, so the record holds the whole exchange).

    Every observation is ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=add_generation_prompt)``. The system message joins, with a blank line between them,
    ``system_prompt`` (fixed for the wrapper) and ``info["system_prompt"]`` from the inner env's reset (where
    :class:`ContextInjection` in ``mode="system"`` puts the fast weights); there is none when both are empty.
    A tokenizer without a chat template is refused at construction.
    """

    def __init__(self, env: gym.Env[str, str], tokenizer: ChatTokenizer, system_prompt: str | None = None,
                 add_generation_prompt: bool = True) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, tokenizer=tokenizer, system_prompt=system_prompt,
                                                 add_generation_prompt=add_generation_prompt)
        gym.Wrapper.__init__(self, env)
        if not callable(getattr(tokenizer, "apply_chat_template", None)):
            raise TypeError("ChatFormat: tokenizer must have an apply_chat_template method (a transformers "
                            f"tokenizer), got {type(tokenizer).__name__}")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"ChatFormat: the tokenizer {type(tokenizer).__name__} has no chat template; set "
                             "tokenizer.chat_template to a Jinja template string (or load an instruct model's "
                             "tokenizer) before wrapping")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(f"ChatFormat: system_prompt must be a str or None, got {type(system_prompt).__name__}")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.add_generation_prompt = bool(add_generation_prompt)
        # The rendered conversation outgrows the inner observation bound as actions are appended to it.
        self.observation_space = TextSpace(max_length=1 << 30)
        self.messages: list[dict[str, str]] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.messages = []
        parts = [p for p in (self.system_prompt, info.get("system_prompt")) if isinstance(p, str) and p.strip()]
        if parts:
            self.messages.append({"role": "system", "content": "\n\n".join(parts)})
        self.messages.append({"role": "user", "content": obs})
        return self._render(), self._with_messages(info)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        # The inner env has type-checked the action, so it is a str here.
        self.messages.append({"role": "assistant", "content": action})
        self.messages.append({"role": "user", "content": obs})
        return self._render(), reward, terminated, truncated, self._with_messages(info)

    def _render(self) -> str:
        text = self.tokenizer.apply_chat_template(self.messages, tokenize=False,
                                                  add_generation_prompt=self.add_generation_prompt)
        if not isinstance(text, str):
            raise TypeError(f"ChatFormat: apply_chat_template(tokenize=False) returned {type(text).__name__}, "
                            "expected str")
        return text

    def _with_messages(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        info["messages"] = [dict(m) for m in self.messages]
        return info
