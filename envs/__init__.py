"""Task families, one module each; importing this package registers every ``fst/`` id.

Each module registers its ids at the bottom with :func:`fst_env.register_env`. Modules are discovered, so a
new task family is one new file here.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
