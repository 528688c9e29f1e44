"""Dataclass configs as command lines, and the wrapper that turns a run's exceptions into exit codes.

The generator is our own ~60 lines of argparse, chosen over the two usual ones: HfArgumentParser needs
`transformers` (classic RL should not import it) and tyro prints multi-line boxed errors and has no
`--config FILE` or preset layer. What it keeps from HfArgumentParser: every field is a flag in
`--kebab-case` and `--snake_case`, with its help and default; `--flag` alone sets a bool, `--flag false`
and `--no-flag` clear it; lists take several values; `--x none` unsets an optional field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import json
import multiprocessing
import os
import runpy
import sys
import tempfile
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from classic_rl.infra.errors import ConfigError, NonFiniteError, TrainingInterrupted


def config_field(default: Any, help: str) -> Any:
    """A dataclass field with help text (list defaults are copied per instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Field help with its default, and the script's docstring as written."""


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints the whole usage block; one line is enough
        raise ConfigError(f"{message}{self._suggestion(message)} (see --help)")

    def _suggestion(self, message: str) -> str:
        """"; did you mean --x?" for an unrecognised flag close to a known one (a typo, or another library's name)."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [name for name in self._option_string_actions if name.startswith("--")]
        for flag in (word.split("=")[0] for word in message.split(":", 1)[1].split() if word.startswith("--")):
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
            if close:
                return f"; did you mean {close[0]}?"
        return ""


def script_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser for scripts without a config dataclass, with the same one-line errors."""
    return _OneLineErrorParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "y", "t", "1"):
        return True
    if text.lower() in ("false", "no", "n", "f", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = parse.__name__  # argparse names the type in its errors ("invalid float value")
    return parse_or_none


def _add_field(parser: argparse.ArgumentParser, field: dataclasses.Field, hint: Any) -> None:
    """One field as `--kebab-name` / `--snake_name`, typed by its annotation."""
    names = dict.fromkeys([f"--{field.name.replace('_', '-')}", f"--{field.name}"])
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    base = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help", "")}
    if base is bool:
        kwargs.update(type=parse_bool, nargs="?", const=True)
    elif get_origin(base) is list:
        kwargs.update(type=get_args(base)[0], nargs="+")
    else:
        kwargs["type"] = base
    if optional and kwargs["type"] is not parse_bool and "nargs" not in kwargs:
        kwargs["type"] = _none_or(kwargs["type"])
        kwargs["help"] += " ('none': unset)"
    parser.add_argument(*names, **kwargs)
    if base is bool and field.default is True:
        parser.add_argument(*dict.fromkeys([f"--no-{field.name.replace('_', '-')}", f"--no_{field.name}"]),
                            dest=field.name, action="store_false", help=f"Turn off --{field.name.replace('_', '-')}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value read from a config file has the field's type (a bool is no number here, an int is a float)."""
    if get_origin(hint) in (Union, types.UnionType):
        return any(_fits(value, option) for option in get_args(hint))
    if get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(option) for option in get_args(hint))
    if get_origin(hint) is list:
        return f"a list of {_type_name(get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def load_config_file(path: str) -> dict[str, Any]:
    """Field values from a JSON or YAML file (e.g. a run's config.json)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read --config {path}: {err.strerror}") from None
    is_yaml = path.endswith((".yaml", ".yml"))
    try:
        values = yaml.safe_load(text) if is_yaml else json.loads(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path} is not valid {'YAML' if is_yaml else 'JSON'}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of field names to values")
    return values


def parse_config(config_cls: type, argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None,
                 description: str = "", read_by_script: Sequence[str] = ()) -> Any:
    """Build config_cls from the command line: every field is a flag with its help.

    Precedence: explicit flags > `--config FILE` > `defaults` (e.g. a preset) > the dataclass. read_by_script names
    keys of the file that are not fields, which the script read itself (train_classic.py's algo, from a run's config.json).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _OneLineErrorParser(description=description, formatter_class=_HelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="JSON or YAML file of field values (flags override it)")
    hints = get_type_hints(config_cls)
    fields = dataclasses.fields(config_cls)
    for field in fields:
        _add_field(parser, field, hints[field.name])
    merged = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default for f in fields}
    merged.update(defaults or {})
    parser.set_defaults(**merged)  # before the first parse, which prints --help
    config_path = parser.parse_known_args(argv)[0].config
    if config_path:
        file_values = {k: v for k, v in load_config_file(config_path).items() if k not in read_by_script}
        unknown = sorted(set(file_values) - set(merged))
        if unknown:
            raise ConfigError(f"--config {config_path} has unknown fields {unknown}; accepted: {', '.join(sorted(merged))}")
        for name, value in file_values.items():
            if not isinstance(value, str) and not _fits(value, hints[name]):  # argparse converts and checks strings itself
                raise ConfigError(f"--config {config_path}: {name} is {value!r}; accepted: {_type_name(hints[name])}")
        merged.update(file_values)
    parser.set_defaults(**merged)
    values = vars(parser.parse_args(argv))
    values.pop("config")
    return config_cls(**values)


def cli(main: Callable[[], Any]) -> Callable[[], None]:
    """Run a script's main: a ConfigError becomes `error: ...` on stderr and exit status 2, a
    non-finite loss or reward exit status 1, Ctrl-C exit status 130, a closed output pipe exit status 1;
    none prints a traceback."""

    @functools.wraps(main)
    def wrapped() -> None:
        try:
            main()
            sys.stdout.flush()  # here, where a closed pipe is caught below, not at exit
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except NonFiniteError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except (TrainingInterrupted, KeyboardInterrupt) as err:
            print(f"interrupted: {err or 'nothing was saved'}", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # the reader stopped reading (`script | head`): stop quietly, as shell tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else the exit's flush of stdout fails again
            sys.exit(1)

    return wrapped


def run_in_own_process(script: str | Path, args: Sequence[str]) -> None:
    """Run a Python script in a process of its own, its output discarded, as the comparison scripts run each
    training run; a failure raises RuntimeError with the command and the end of its stderr.

    The process is forked from a server that imported the script's modules once (multiprocessing's forkserver): a
    fresh python spent ~9 s of each comparison run before the run's clock started (most of it importing torch and
    transformers), a forked one ~1 s. The server runs no torch op, so each child starts its own OpenMP threads (a fork
    after a parallel op hangs GNU libgomp), and each child takes this process's environment and working folder as
    they are at the call."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(imported_modules(Path(script)))  # read once, when the first run starts the server
    with tempfile.NamedTemporaryFile(suffix=".stderr") as stderr:
        child = context.Process(target=_run_script, args=(str(script), list(args), dict(os.environ), os.getcwd(), stderr.name))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"{sys.executable} {script} {' '.join(args)} failed (exit {child.exitcode}):\n"
                               f"{Path(stderr.name).read_text()[-2000:]}")


def imported_modules(script: Path) -> list[str]:
    """The absolute imports at a script's top level (`import a.b`, `from a.b import c`: a.b)."""
    body = ast.parse(script.read_text()).body
    return ([alias.name for node in body if isinstance(node, ast.Import) for alias in node.names]
            + [node.module for node in body if isinstance(node, ast.ImportFrom) and node.level == 0])


def _run_script(script: str, args: list[str], environ: dict[str, str], cwd: str, stderr_path: str) -> None:
    """In the forked child: the caller's environment and folder, stdout discarded, stderr to stderr_path, the script
    run as __main__ (a SystemExit's code is the process's exit code)."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    with open(os.devnull, "w") as null, open(stderr_path, "w") as err:
        os.dup2(null.fileno(), sys.stdout.fileno())
        os.dup2(err.fileno(), sys.stderr.fileno())
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def load_user_object(spec: str, flag: str) -> Callable:
    """The callable named by `path/to/file.py:NAME` or `package.module:NAME` (a function, or a class to call), from the
    command-line flag `flag`; a ConfigError for a missing file, module or name."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"file {path} not found (from {flag} {spec})")
        module_spec = importlib.util.spec_from_file_location(f"user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ConfigError(f"cannot import module {target!r} for {flag} {spec}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{target} has no function or class {attr!r} (from {flag} {spec})")
    return fn
