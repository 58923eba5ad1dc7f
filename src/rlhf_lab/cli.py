"""``rlhf-lab VERB [--config FILE.yaml] [--key value ...]``: the command-line contract.

Every verb maps to a recipe module with a config dataclass and a ``run(config)`` function. User mistakes
(bad flags, bad data, missing files) print one line and exit 2; a run that cannot go on (NaN loss) exits 1.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import sys

from rlhf_lab.commands import VERBS  # verb -> (module, config class, one-line description)
from rlhf_lab.errors import UserError

# verbs whose first argument may be given without its flag name
POSITIONAL = {"carto": "run_dir", "gold-eval": "run_dir", "report": "run_dir", "verify": "run_dir"}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {verb:<{width}}  {desc}" for verb, (_, _, desc) in VERBS.items()]
    return (
        "usage: rlhf-lab VERB [--config FILE.yaml] [--key value ...]\n\n"
        "Run the RLHF pipeline and measure what goes wrong in it.\n\nverbs:\n" + "\n".join(lines) +
        "\n\n`rlhf-lab VERB --help` explains every flag of a verb."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from rlhf_lab import __version__

        print(f"rlhf-lab {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"rlhf-lab: error: unknown verb {verb!r} (one of: {', '.join(VERBS)})", file=sys.stderr)
        return 2
    module_name, config_name, description = VERBS[verb]
    if verb in POSITIONAL and rest and not rest[0].startswith("-"):
        rest = [f"--{POSITIONAL[verb]}", rest[0], *rest[1:]]  # `rlhf-lab carto RUN_DIR ...`
    if not _asks_online(rest):  # nothing phones home unless asked: the hub libraries read this at import
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    _quiet_libraries()
    try:
        from rlhf_lab.config import parse_config_and_keys

        module = importlib.import_module(module_name)
        config, given = parse_config_and_keys(getattr(module, config_name), rest, f"rlhf-lab {verb}", description)
        run = module.run
        result = run(config, given=given) if "given" in inspect.signature(run).parameters else run(config)
    except UserError as e:
        print(f"rlhf-lab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlhf-lab: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or _debug():
            raise
        print(f"rlhf-lab: run stopped: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        return 1
    except Exception as e:  # a run that cannot go on: one line, no traceback (RLHF_LAB_DEBUG=1 shows it)
        from rlhf_lab.engine import RunFailure

        if not isinstance(e, RunFailure) or _debug():
            raise
        print(f"rlhf-lab: run stopped: {e}", file=sys.stderr)
        return 1
    return getattr(result, "exit_code", 0)  # `verify` exits 1 when it found damage


def _quiet_libraries() -> None:
    """Our own progress bars and messages stay; the libraries' per-load bars and deprecation chatter go."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _asks_online(args: list[str]) -> bool:
    """``--online [true]`` in the flags, or ``online: true`` in the ``--config`` file (flags win)."""
    def truthy(value: object) -> bool:
        return str(value).strip().lower() in ("1", "true", "yes", "on")

    for i, token in enumerate(args):
        if token == "--online":
            return truthy(args[i + 1]) if i + 1 < len(args) and not args[i + 1].startswith("--") else True
        if token.startswith("--online="):
            return truthy(token.split("=", 1)[1])
    for i, token in enumerate(args[:-1]):
        if token == "--config":
            try:
                import yaml

                with open(args[i + 1], encoding="utf-8") as f:
                    values = yaml.safe_load(f)
            except (OSError, ValueError, yaml.YAMLError):
                return False  # the config loader reports the problem with its own one-line error
            return isinstance(values, dict) and truthy(values.get("online", False))
    return False


def _debug() -> bool:
    return os.environ.get("RLHF_LAB_DEBUG") == "1"


if __name__ == "__main__":
    sys.exit(main())
