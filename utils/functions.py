"""Resolve `module@Class` identifiers (docs/network.md#model-interface) to classes."""
import importlib

from utils.errors import UserError


def load_model_class(identifier: str, prefix: str = "models."):
    """`recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1` -> the class in models/recursive_reasoning/trm.py."""
    if "@" not in identifier:
        raise UserError(f"'{identifier}' is not of the form module@Class (e.g. recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1)")
    module_path, class_name = identifier.split("@", 1)
    try:
        module = importlib.import_module(prefix + module_path)
    except ModuleNotFoundError as e:
        raise UserError(f"'{identifier}': module '{prefix}{module_path}' not found ({e.msg}); "
                        f"put the file under {prefix.rstrip('.').replace('.', '/')}/") from None
    if not hasattr(module, class_name):
        raise UserError(f"'{identifier}': module '{prefix}{module_path}' has no class '{class_name}'")
    return getattr(module, class_name)

