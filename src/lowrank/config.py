"""The one config base of compression methods and adapters: shared fields, a versioned dict.

A :class:`Config` subclass is a dataclass registered in its family's
:class:`~lowrank.registry.Registry` (``compress.METHODS`` under the dict key ``"method"``,
``adapt.ADAPTERS`` under ``"kind"``). :meth:`Config.to_dict` writes the plugin name, the
config's ``version`` and every field; :meth:`Config.from_dict` rebuilds any version up to the
current one (a config whose fields changed raises ``version`` and implements
:meth:`Config.upgrade`) and refuses keys that are not fields, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError
from .registry import Registry


@dataclass
class Config:
    """``targets``, ``ignore``, ``seed``, validation and the versioned dict round trip."""

    name_key: ClassVar[str] = ""  # the dict key naming the plugin ('method', 'kind')
    plugins: ClassVar[Registry[type[Config]]]  # the family's registry
    version: ClassVar[int] = 1

    targets: list[str] | None = field(default=None, metadata={
        "help": "modules to transform: class names, dotted names or 're:' regexes (a "
                "container selects its layers); default: every linear layer inside the "
                "repeated blocks (the conv method: every plain Conv2d)"})
    ignore: list[str] | None = field(default=None, metadata={
        "help": "modules to leave untouched, same grammar as targets"})
    seed: int = field(default=0, metadata={
        "help": "random seed (randomized solvers, initialisations and random bases)"})

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{name_key: plugin name, "version": version, <every field>}`` (JSON-ready)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {self.name_key: self.plugins.name_of(type(self)), "version": self.version,
                **fields}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """The registered config that ``data`` (:meth:`to_dict` output of any version up to
        the current one; without ``"version"``: the current one) names, rebuilt; unknown keys
        raise :class:`ConfigError`."""
        key, kind = cls.name_key, cls.plugins.kind
        if not isinstance(data, Mapping) or key not in data:
            raise ConfigError(f"a {kind} config must be a JSON object with a '{key}' key")
        name = data[key]
        target = cls.plugins.get(name)
        if not issubclass(target, cls):
            raise ConfigError(f"{kind} '{name}' is a {target.__name__}, not a {cls.__name__}")
        version = data.get("version", target.version)  # none given: the current one
        if isinstance(version, bool) or not isinstance(version, int) \
                or not 1 <= version <= target.version:
            raise ConfigError(f"{kind} '{name}' has config version {version!r}; this lowrank "
                              f"reads versions 1 to {target.version}")
        fields = {k: v for k, v in data.items() if k not in (key, "version")}
        if version < target.version:
            fields = target.upgrade(fields, version)
        valid = [f.name for f in dataclasses.fields(target)]
        unknown = sorted(set(fields) - set(valid))
        if unknown:
            raise ConfigError(f"{kind} '{name}' has no field {', '.join(unknown)}: its fields "
                              f"are {', '.join(valid)}")
        return target(**fields)

    @classmethod
    def upgrade(cls, fields: dict[str, Any], version: int) -> dict[str, Any]:
        """The fields of a version-``version`` dict in the current version's terms (configs
        that raised ``version`` override this)."""
        return fields

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> one-line description."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
