"""Hydra reports a bad command-line override in 3-15 lines and exit code 1; compose the config once before
Hydra runs, so the same mistake is one line and exit code 2 like every other user error."""
import re
import sys
from pathlib import Path
from typing import List, Optional

from utils.errors import UserError, user_errors

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "config")
NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'")


def override_problem(error: Exception, config_name: str) -> str:
    message = str(error)
    key = NOT_IN_STRUCT.search(message)
    if key:  # Hydra suggests +key=..., which our config then rejects as unknown: name the real fix
        return f"unknown config key '{key.group(1)}': remove it or check its spelling against config/{config_name}.yaml"
    override = getattr(error, "override", None)  # a syntax error: Hydra's message does not say where
    if override is not None:
        return (f"cannot parse {override!r}: {message.splitlines()[0]}; quote values holding brackets, "
                f"commas or spaces (see https://hydra.cc/docs/advanced/override_grammar/basic)")
    return f"{message.split('Config search path')[0].strip()} (see config/{config_name}.yaml)"


def compose_problem(config_name: str, overrides: List[str]) -> Optional[str]:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        return override_problem(e, config_name)
    return None


@user_errors
def check_command_line(config_name: str, argv: Optional[List[str]] = None) -> None:
    """Only plain `key=value` runs: flags (--multirun, --help, --cfg, ...) and hydra.* keys stay Hydra's."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("-") for a in argv):
        return
    problem = compose_problem(config_name, [a for a in argv if not a.lstrip("+~").startswith("hydra")])
    if problem:
        raise UserError(problem)
