"""YAML rule configs: the schema, its validation, and the shipped presets.

A config maps onto :class:`lrp_cli.engine.Composite`. Every mistake (unknown rule or
parameter, wrong type, malformed pattern) is reported as ``FILE:LINE: what is wrong``.
Importing this module does not import torch; building the composite does.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .engine.schema import CHOICES, POSITION, RULES, SETTING_ALIASES, SETTINGS, TOP_LEVEL

PRESET_PACKAGE = "lrp_cli.configs"

TYPE_NAMES = {float: "a number", list: "a list of numbers", bool: "true/false", str: "a string"}
MATCH_KEYS = {"name", "type", "position"}
LINE = "__line__"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and line."""


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value")}
        mapping[LINE] = _Line(node.start_mark.line + 1, lines)
        return mapping


class _Line(int):
    """A mapping's first line, which also knows the line of each of its keys."""

    def __new__(cls, line: int, keys: dict):
        value = super().__new__(cls, line)
        value.keys = keys
        return value

    def of(self, key) -> int:
        return self.keys.get(key, int(self))

    def __reduce__(self):  # pickle (Ray ships configs to its workers) cannot call __new__ alone
        return (_Line, (int(self), self.keys))


@dataclass(frozen=True)
class RuleConfig:
    """A validated config: the parsed YAML plus where it came from."""

    name: str
    source: str  # the file path, or "preset NAME"
    data: dict

    @property
    def description(self) -> str:
        return self.data.get("description", "")

    def composite(self):
        """The engine's :class:`Composite` for this config (imports torch)."""
        return _build_composite(self)


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description, for every YAML file shipped in configs/."""
    presets = {}
    for entry in sorted(resources.files(PRESET_PACKAGE).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            presets[entry.name[: -len(".yaml")]] = str(data.get("description", "")).strip()
    return presets


def load_config(spec: str | Path) -> RuleConfig:
    """Load a preset by name or a YAML file by path, validating it fully."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{spec}: no such config file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{spec}: cannot read config: {error}") from error
        return parse_config(text, source=str(spec), name=path.stem)
    presets = list_presets()
    if str(spec) not in presets:
        close = difflib.get_close_matches(str(spec), presets, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown preset {str(spec)!r}{hint}; presets: {', '.join(presets)}; "
            f"or give a path to a YAML file"
        )
    text = resources.files(PRESET_PACKAGE).joinpath(f"{spec}.yaml").read_text(encoding="utf-8")
    return parse_config(text, source=f"preset {spec}", name=str(spec))


def parse_config(text: str, source: str = "<config>", name: str = "custom") -> RuleConfig:
    """Parse and validate YAML text; errors name ``source`` and the line."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from error
    if data is None:
        data = {LINE: 1}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a config must be a mapping with a 'rules' list")
    _Validator(source).config(data)
    return RuleConfig(name, source, data)


class _Validator:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: dict | int, message: str, key: str | None = None):
        line = where.get(LINE, "?") if isinstance(where, dict) else where
        if key is not None and isinstance(line, _Line):
            line = line.of(key)
        raise ConfigError(f"{self.source}:{line}: {message}")

    def unknown_keys(self, mapping: dict, allowed: set, what: str, where: dict | None = None):
        for key in mapping:
            if key != LINE and key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(
                    where or mapping,
                    f"unknown {what} {key!r}{hint}; allowed: {', '.join(sorted(allowed))}",
                    key,
                )

    def config(self, data: dict):
        self.unknown_keys(data, TOP_LEVEL, "top-level key")
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            self.fail(data, "'rules' must be a list of entries with 'match' and 'rule'")
        for entry in rules:
            self.entry(entry, data)
        for key in ("default", "batchnorm"):
            if key not in data:
                continue
            rule = data[key]
            if isinstance(rule, str):
                rule = data[key] = {"rule": rule, LINE: data[LINE]}
            if not isinstance(rule, dict):
                self.fail(data, f"'{key}' must be a rule name or a mapping with 'rule'")
            self.rule(rule)
            slot = RULES[rule["rule"]].slot
            if slot not in ("linear", "any") or (key == "default" and slot == "any"):
                self.fail(rule, f"rule {rule['rule']} cannot be the {key} rule")
        for alias, key in SETTING_ALIASES.items():
            if alias in data and key in data:
                self.fail(data, f"give '{key}' or its old name '{alias}', not both", alias)
        for key in [*SETTINGS, *SETTING_ALIASES]:
            if key not in data:
                continue
            spec = SETTINGS[SETTING_ALIASES.get(key, key)]
            setting = data[key]
            if not isinstance(setting, dict):
                example = ", ".join(f"{k}: ..." for k in spec.params)
                self.fail(data, f"'{key}' must be a mapping, e.g. {{{example}}}", key)
            self.params(setting, spec, dict(setting), what=f"{key} parameter")
        for key, allowed in CHOICES.items():
            if key in data and data[key] not in allowed:
                self.fail(data, f"{key} must be {' or '.join(allowed)}, got {data[key]!r}", key)
        if not isinstance(data.get("strict", False), bool):
            self.fail(data, "strict must be true or false", "strict")
        if not isinstance(data.get("description", ""), str):
            self.fail(data, "description must be a string", "description")

    def entry(self, entry, parent: dict):
        if not isinstance(entry, dict):
            self.fail(
                parent, f"each rule entry must be a mapping with 'match' and 'rule', got {entry!r}"
            )
        if "match" not in entry or "rule" not in entry:
            self.fail(entry, "a rule entry needs both 'match' and 'rule'")
        match = entry["match"]
        if not isinstance(match, dict):
            self.fail(entry, "'match' must be a mapping of name / type / position")
        self.unknown_keys(match, MATCH_KEYS, "match key")
        if not set(match) - {LINE}:
            self.fail(match, "'match' needs at least one of name, type, position")
        if "name" in match and (not isinstance(match["name"], str) or not match["name"]):
            self.fail(match, "match name must be a non-empty glob string, e.g. 'features.*'")
        if "type" in match:
            types = match["type"] if isinstance(match["type"], list) else [match["type"]]
            if not types or not all(isinstance(t, str) and t.isidentifier() for t in types):
                self.fail(match, "match type must be a layer class name or a list of them")
        if "position" in match:
            position = match["position"]
            if isinstance(position, bool) or not POSITION.match(str(position)):
                message = "position must be first, last, an index, or a range 'start:stop'"
                self.fail(match, message, "position")
        self.rule(entry)

    def rule(self, entry: dict):
        name = entry.get("rule")
        if name not in RULES:
            close = difflib.get_close_matches(str(name), RULES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(entry, f"unknown rule {name!r}{hint}; rules: {', '.join(RULES)}", "rule")
        params = {k: v for k, v in entry.items() if k not in ("match", "rule", LINE)}
        self.params(entry, RULES[name], params)

    def params(self, where: dict, spec, params: dict, what: str | None = None):
        params = {k: v for k, v in params.items() if k != LINE}
        owner = f"rule {spec.name}" if spec.name in RULES else spec.name
        allowed = spec.params
        self.unknown_keys(params, set(allowed), what or f"parameter for rule {spec.name}", where)
        for key, value in params.items():
            types = allowed[key]
            if float in types and self.is_number(value):
                if key not in spec.signed:
                    self.number(where, key, value)
            elif list in types and isinstance(value, list):
                if not value or not all(self.is_number(v) for v in value):
                    self.fail(where, f"{key} must be a number or a list of numbers", key)
            elif bool in types and isinstance(value, bool):
                continue
            elif str in types and isinstance(value, str):
                choices = spec.choices.get(key)
                if choices and value not in choices:
                    message = f"{owner}: {key} must be {' or '.join(choices)}, got {value!r}"
                    self.fail(where, message, key)
            else:
                wanted = " or ".join(TYPE_NAMES[t] for t in types)
                self.fail(where, f"{key} of {owner} must be {wanted}, got {value!r}", key)
        problem = spec.check(params) if spec.check else None
        if problem:
            self.fail(where, f"{owner}: {problem}")

    @staticmethod
    def is_number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def number(self, where: dict, key: str, value):
        if not self.is_number(value) or value != value or value < 0:
            self.fail(where, f"{key} must be a non-negative number, got {value!r}", key)


def _params(mapping: dict, *skip: str) -> dict:
    return {k: v for k, v in mapping.items() if k not in (*skip, LINE)}


def _build_composite(config: RuleConfig):
    from . import engine

    data = config.data
    entries = []
    for entry in data.get("rules", []):
        match = entry["match"]
        types = match.get("type", ())
        types = tuple(types) if isinstance(types, list) else (types,) if types else ()
        entries.append(
            engine.RuleEntry(
                engine.LayerMatch(match.get("name"), types, match.get("position")),
                RULES[entry["rule"]].build(_params(entry, "match", "rule")),
                origin=f"{config.source}:{entry[LINE]}",
            )
        )
    kwargs, origins = {}, {}
    for key in ("default", "batchnorm"):
        if key in data:
            kwargs[key] = RULES[data[key]["rule"]].build(_params(data[key], "rule"))
            origins[key] = f"{config.source}:{data[LINE].of(key)}"
    for key in [*SETTINGS, *SETTING_ALIASES]:
        if key in data:
            name = SETTING_ALIASES.get(key, key)
            kwargs[name] = SETTINGS[name].build(_params(data[key]))
            origins[name] = f"{config.source}:{data[LINE].of(key)}"
    for key in CHOICES:
        if key in data:
            kwargs[key] = data[key]
            origins[key] = f"{config.source}:{data[LINE].of(key)}"
    return engine.Composite(
        entries,
        strict=data.get("strict", False),
        description=config.description,
        name=config.name,
        origins=origins,
        **kwargs,
    )
