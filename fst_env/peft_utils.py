"""One place that tells a PEFT-wrapped model from a plain one, and finds the transformers module inside.

Imports neither torch nor peft: the checks are duck-typed on what the callers use, so torch-free modules (the
reflection adapters, checkpoints) can call them, and a model built without peft installed is never mistaken
for one with adapters.
"""

from __future__ import annotations

from typing import Any


def is_peft(model: Any) -> bool:
    """True for a PEFT wrapper (``peft.PeftModel`` and its subclasses): it has ``peft_config`` and
    ``get_base_model``, hence ``disable_adapter()``, ``merge_and_unload()`` and the ``active_adapters`` property."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def has_adapters(model: Any) -> bool:
    """True when ``model`` carries LoRA/PEFT adapters in any form: a PEFT wrapper, or a plain transformers model
    with adapters loaded through its own PEFT integration (``model.load_adapter``); both set ``peft_config``."""
    return hasattr(model, "peft_config")


def core_model(model: Any) -> Any:
    """The transformers module to call: a PEFT wrapper's base model (LoRA layers are injected into it in place,
    so calling it runs the adapters), else ``model`` itself."""
    return model.get_base_model() if is_peft(model) else model
