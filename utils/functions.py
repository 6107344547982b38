"""Resolve `module@Class` identifiers (docs/network.md#model-interface) to classes and their source files."""
import importlib
import inspect


def load_model_class(identifier: str, prefix: str = "models."):
    """`recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1` -> the class in models/recursive_reasoning/trm.py."""
    if "@" not in identifier:
        raise ValueError(f"'{identifier}' is not of the form module@Class (e.g. recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1)")
    module_path, class_name = identifier.split("@", 1)
    try:
        module = importlib.import_module(prefix + module_path)
    except ModuleNotFoundError as e:
        raise ValueError(f"'{identifier}': module '{prefix}{module_path}' not found ({e.msg}); "
                         f"put the file under {prefix.rstrip('.').replace('.', '/')}/") from None
    if not hasattr(module, class_name):
        raise ValueError(f"'{identifier}': module '{prefix}{module_path}' has no class '{class_name}'")
    return getattr(module, class_name)


def get_model_source_path(identifier: str, prefix: str = "models.") -> str:
    return inspect.getsourcefile(load_model_class(identifier, prefix))
