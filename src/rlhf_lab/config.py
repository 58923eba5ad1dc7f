"""Configs: one dataclass per command, filled from defaults < ``--config FILE.yaml`` < ``--key value`` flags.

Each field carries its help text in ``metadata["help"]``, so ``rlhf-lab VERB --help`` explains every flag and
the YAML file and the command line use the same snake_case names (as the upstream research codebases and TRL do). Unknown keys and
values of the wrong type are user errors naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhf_lab.commands import command_of
from rlhf_lab.errors import UserError

C = TypeVar("C")


def arg(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with its ``--help`` text (and allowed values, checked when the config is built)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as ``int | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])[0], True
    if origin is list:
        return list, False
    return annotation, False


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    base, optional = _base_type(annotation)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise UserError(f"config key {key!r} may not be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):  # nan passes no range check and inf passes "> 0": no flag means either
                raise UserError(f"--{key}: {value!r} is not a finite number")
            return number
        if base is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, (list, tuple)):
                return list(value)
            raise ValueError
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config key {key!r}: {value!r} is not a valid {base.__name__}") from None
    return value


def _type_name(annotation: Any) -> str:
    base, optional = _base_type(annotation)
    name = {list: "LIST"}.get(base, base.__name__.upper())
    return f"{name}|none" if optional else name


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{self.prog}: {message}")


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", metavar="FILE.yaml", default=None, help="YAML file with any of the keys below")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            help_text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        bool_field = _base_type(hints[f.name])[0] is bool
        parser.add_argument(
            f"--{f.name}",
            default=argparse.SUPPRESS,
            help=f"{help_text} [default: {default}]",
            metavar=_type_name(hints[f.name]),
            # `--flag` alone means true for booleans, as in the upstream research scripts.
            nargs="?" if bool_field else None,
            const="true" if bool_field else None,
        )
    return parser


def parse_config(cls: type[C], argv: list[str], prog: str, description: str = "") -> C:
    """Build ``cls`` from its defaults, then ``--config FILE.yaml``, then ``--key value`` overrides."""
    return parse_config_and_keys(cls, argv, prog, description)[0]


def parse_config_and_keys(cls: type[C], argv: list[str], prog: str, description: str = "") -> tuple[C, set[str]]:
    """As ``parse_config``, plus the set of keys the user set explicitly (in the YAML file or as flags)."""
    hints = typing.get_type_hints(cls)
    parser = build_parser(cls, prog, description)
    namespace = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = namespace.pop("config", None)
    if config_file:
        values.update(load_yaml_config(config_file, cls))
    values.update(namespace)
    return make_config(cls, values, hints), set(values)


def load_yaml_config(path: str, cls: type) -> dict[str, Any]:
    """Read a YAML mapping of config keys; an unknown key is an error naming the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else path
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', 'parse error')})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of key: value")
    written_by = data.pop("command", None)  # config.yaml of a run: the verb that wrote it
    verb = command_of(cls)
    if written_by is not None and verb is not None and written_by != verb:
        raise UserError(f"{path}: written by `rlhf-lab {written_by}`, not `rlhf-lab {verb}`")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise UserError(f"{path}: unknown config key {key!r}")
    return data


def make_config(cls: type[C], values: dict[str, Any], hints: dict | None = None) -> C:
    """Coerce ``values`` to the field types of ``cls``, check choices, then run its ``validate()``."""
    hints = hints or typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key {key!r}")
        kwargs[key] = _coerce(key, value, hints[key])
        choices = fields[key].metadata.get("choices")
        if choices is not None and kwargs[key] is not None and kwargs[key] not in choices:
            raise UserError(f"--{key}: {kwargs[key]!r} is not one of {', '.join(map(str, choices))}")
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML, headed by ``command: VERB`` (the verb whose config it is), so a run directory
    says which command wrote it and ``rlhf-lab VERB --config config.yaml`` reruns it."""
    verb = command_of(type(config))
    head = {"command": verb} if verb else {}
    return yaml.safe_dump({**head, **dataclasses.asdict(config)}, sort_keys=False, allow_unicode=True)


def require(condition: bool, key: str, message: str) -> None:
    """Raise a user error naming the flag when ``condition`` is false (used by configs' ``validate``)."""
    if not condition:
        raise UserError(f"--{key}: {message}")


SEED_LIMIT = 2**32  # numpy's seed range; torch overflows on seeds near 2**63 (and the data order multiplies them)


def require_seed(value: int | None, key: str, count: int = 1) -> None:
    """A seed (and, for ``count`` ensemble members, the ``count - 1`` seeds after it) must lie in [0, 2**32)."""
    after = f" (so must the {count - 1} member seeds after it)" if count > 1 else ""
    require(value is None or 0 <= value <= SEED_LIMIT - count, key, f"must be in [0, 2**32){after}")


def warn(message: str) -> None:
    print(f"rlhf-lab: warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# Field groups shared by several commands (a command's config inherits the groups it needs)
# ---------------------------------------------------------------------------------------------------------

TEMPLATE_CHOICES = ("chat", "hh", "lmflow", "question_answer", "oasst", "raw")
DTYPE_CHOICES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class ModelArgs:
    model_name: str = arg("default", "model: default (SmolLM2-135M-Instruct), tiny-random, or an HF/PEFT directory")
    template: str = arg("chat", "how prompts become text: the model's chat template or an upstream codebase's", TEMPLATE_CHOICES)
    dtype: str = arg("float32", "weights dtype", DTYPE_CHOICES)
    online: bool = arg(False, "allow fetching models/datasets from a hub (offline by default)")
    trust_remote_code: bool = arg(False, "run code shipped with a model (off unless you trust it)")
    allow_pickle: bool = arg(False, "allow loading weights from pickle (.bin) files")


@dataclasses.dataclass
class DataArgs:
    dataset: str = arg("hh-rlhf:helpful-base", "data: embedded name, file(s) (comma-separated), or hub name")
    data_format: str = arg("auto", "input format (auto-detected by default)", (
        "auto", "hh-rlhf", "trl", "webgpt", "stack-exchange-paired", "rlcd", "alpaca_farm", "prompts", "sft"))
    split: str = arg("train", "fixed-seed split of the data to use", ("train", "eval", "all"))
    bottom: int | None = arg(None, "first row of the split to use (rows bottom..top-1, before --limit; as "
                             "Singhal et al. 2023's generate_outs BOTTOM)")
    top: int | None = arg(None, "row of the split after the last one to use (as their TOP)")
    limit: int | None = arg(None, "use only the first N rows after the split")
    on_bad_row: str = arg("auto", "bad rows: stop naming file:line (error), or skip and count them (skip); "
                          "auto = error for your files, skip for the embedded dataset", ("auto", "error", "skip"))

    def validate_data(self) -> None:
        require(self.limit is None or self.limit >= 1, "limit", "must be at least 1")
        require(self.bottom is None or self.bottom >= 0, "bottom", "must be >= 0")
        require(self.top is None or self.top >= 1, "top", "must be at least 1")
        require(self.top is None or self.bottom is None or self.top > self.bottom, "top",
                f"must exceed --bottom ({self.bottom}): rows bottom..top-1 are used")


@dataclasses.dataclass
class RewardArgs:
    """The reward side of every recipe that scores with reward models (ppo, grpo, raft, evaluate, pareto): one
    name and one help text per concept. A recipe whose paper sets another default overrides the field and says
    why in its help."""

    reward_models: list[str] = arg([], "reward model(s): train-rm run dirs or reward-model dirs, comma-separated; "
                                   "a train-rm ensemble dir brings all its members; more than one member = an "
                                   "ensemble")
    objective: str = arg("mean", "how an ensemble's member scores become one reward: mean, WCO (min) or UWO "
                         "(mean − λ·variance; Coste et al. 2023)", ("mean", "WCO", "UWO", "wco", "uwo"))
    uwo_weight: float = arg(0.5, "λ of UWO: mean − λ·variance across members")
    ensemble_ddof: int = arg(1, "ddof of the variance across members: 1 = unbiased (Coste et al. 2023's PPO), "
                             "0 = population")
    reward_batch_size: int = arg(16, "texts per reward-model forward pass")

    def validate_reward(self) -> None:
        require(self.uwo_weight >= 0, "uwo_weight", "must be >= 0")
        require(self.ensemble_ddof in (0, 1), "ensemble_ddof", "must be 0 or 1")
        require(self.reward_batch_size >= 1, "reward_batch_size", "must be at least 1")


@dataclasses.dataclass
class LoraArgs:
    lora_r: int = arg(16, "LoRA rank (with --trainable lora)")
    lora_alpha: int = arg(32, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = arg(0.0, "LoRA dropout")
    lora_target_modules: str = arg("all-linear", "LoRA target modules: comma-separated names, or all-linear")

    def validate_lora(self) -> None:
        require(self.lora_r >= 1, "lora_r", "must be at least 1")
        require(self.lora_alpha >= 1, "lora_alpha", "must be at least 1")
        require(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")

    def lora_targets(self) -> str | list[str]:
        if self.lora_target_modules == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
