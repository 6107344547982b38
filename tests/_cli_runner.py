"""Run many command lines in one process, as `python <script>` / `python -m <module>` would run them, and report
each one's exit code, stderr and any exception that escaped (which a real run would print as a traceback). One
process pays the torch and Hydra imports once for a whole table of cases.

    python tests/_cli_runner.py cases.json results.json     # cases: [{"cmd": [...], "cwd": ...}, ...]"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_case(cmd, cwd):
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    err, out = io.StringIO(), io.StringIO()
    code, escaped = 0, None
    old_cwd, old_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            if cmd[0] == "-m":
                sys.argv = [cmd[1], *cmd[2:]]
                runpy.run_module(cmd[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(cmd)
                runpy.run_path(os.path.join(ROOT, cmd[0]), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # a real run would end in a traceback here
        code, escaped = 1, traceback.format_exc()
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
    return {"code": code, "stderr": err.getvalue(), "escaped": escaped}


def main(cases_path, results_path):
    sys.path.insert(0, ROOT)
    # `python -m X` in a fresh process imports X once; here X may already be imported by an earlier case
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    with open(cases_path) as f:
        cases = json.load(f)
    results = [run_case(case["cmd"], case["cwd"]) for case in cases]
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
