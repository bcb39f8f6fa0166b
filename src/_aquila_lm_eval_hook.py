"""Makes plain ``lm_eval --model aquila`` work: registers the model when lm_eval loads its table.

lm_eval (0.4.x) has no plugin discovery for models: ``--model NAME`` is looked up in
``lm_eval.api.registry.model_registry``, which ``lm_eval/models/__init__.py`` fills with lazy
``"module:Class"`` targets. The file ``aquila-lm-eval.pth``, which the build backend
(``build_backend/aquila_build.py``) puts at the root of site-packages, imports this module at
interpreter start. It only adds a finder to ``sys.meta_path``: nothing of aquila, torch or lm_eval
is imported then. When ``lm_eval.models`` is imported, the finder adds ``aquila`` to the registry
as a lazy target, so the adapter (and torch) are imported only when ``--model aquila`` is used.

The adapter's own ``@register_model("aquila")`` replaces that target with the class when it runs
(lm_eval allows a ``"module:Class"`` placeholder to be upgraded to the same class), and the
target is added only where ``aquila`` is not registered yet. Errors are swallowed here: this
module runs in every interpreter of the environment and must never break one.

This is a top-level module, not part of the ``aquila`` package, so that interpreter start never
imports ``aquila`` (which would pin, for the whole process, whichever copy of it is installed).
"""

import sys

MODEL = "aquila"
TARGET = "aquila.eval.lm_eval_adapter:AquilaLM"
TRIGGER = "lm_eval.models"


def register() -> None:
    """Add ``aquila`` to lm_eval's model registry as a lazy target, unless it is there."""
    try:
        from lm_eval.api.registry import model_registry

        if MODEL not in model_registry:
            model_registry.register(MODEL, target=TARGET)
    except Exception:  # an lm_eval without this registry, a frozen registry: leave it alone
        pass


class _Loader:
    """The loader of ``lm_eval.models``, which registers ``aquila`` once the module has run."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # resource readers, get_source, ...: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register()


class Finder:
    """A ``sys.meta_path`` entry that answers only for ``lm_eval.models``."""

    searching = False  # another finder that asks the others in turn must not bring us back

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != TRIGGER or cls.searching:
            return None
        cls.searching = True  # the import system holds the module's lock: one search at a time
        try:
            for finder in sys.meta_path:
                if finder is cls or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _Loader(spec.loader)
                    return spec
        except Exception:
            pass
        finally:
            cls.searching = False
        return None  # the normal search goes on (and fails the same way, if it failed here)


def install() -> None:
    try:
        if TRIGGER in sys.modules:
            register()
        elif Finder not in sys.meta_path:
            sys.meta_path.insert(0, Finder)
    except Exception:
        pass


install()
