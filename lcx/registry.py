"""One registry for the model's variant axes (position schemes, memory mechanisms): classes by
name, the one-line refusal of an unknown name, and the options convention both follow.

A registered class with options of its own names a frozen dataclass of them, with their defaults,
as `Options`: the config then has a section model.<name> with those fields, and an instance
receives them as cfg.options, its defaults where it is built without a config. An Options class
may also have
  check(self)           raise ValueError naming the first field with a value it does not allow;
                        called for every section, so a typo is refused even where it has no effect
  SCHEME_ONLY           {field: note}: fields that act only when their class is the one chosen,
                        refused with a value other than their default under another (they would
                        silently do nothing); `note` follows the value in the message
"""
import dataclasses
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):

  def __init__(self, what: str, field: str):
    self.what, self.field = what, field  # e.g. "position scheme", "model.position"
    self._classes: dict[str, type[T]] = {}

  def register(self, name: str) -> Callable[[type[T]], type[T]]:
    def add(cls):
      if name in self._classes:
        raise ValueError(f"{self.what} {name!r} is registered twice")
      self._classes[name] = cls
      return cls
    return add

  def unregister(self, name: str) -> None:
    del self._classes[name]

  def names(self) -> tuple[str, ...]:
    return tuple(sorted(self._classes))

  def lookup(self, name: str) -> type[T]:
    if name not in self._classes:
      raise ValueError(f"{self.field}={name!r} is unknown; allowed: {', '.join(self.names())}")
    return self._classes[name]

  def option_types(self) -> dict[str, type]:
    """Each registered class that has options of its own: name -> its Options dataclass."""
    return {name: cls.Options for name, cls in sorted(self._classes.items())
            if getattr(cls, "Options", None) is not None}

  def with_options(self, name: str, cfg):
    """cfg (a dataclass with an `options` field) with the class's default options where it has
    options and cfg gives none."""
    options = getattr(self.lookup(name), "Options", None)
    if options is not None and cfg.options is None:
      return dataclasses.replace(cfg, options=options())
    return cfg

  def check_sections(self, chosen: str | tuple[str, ...], sections: dict[str, object]) -> None:
    """The options of every registered class as the config holds them (name -> Options): each
    section's own check, and its SCHEME_ONLY fields at their defaults unless it is `chosen` (one
    name, or several: a per-layer pattern's)."""
    chosen_names = (chosen,) if isinstance(chosen, str) else tuple(chosen)
    chosen = "' or '".join(dict.fromkeys(chosen_names))
    for name, options in sections.items():
      if hasattr(options, "check"):
        options.check()
      if name in chosen_names:
        continue
      defaults = type(options)()
      for field, note in getattr(options, "SCHEME_ONLY", {}).items():
        value, default = getattr(options, field), getattr(defaults, field)
        if value != default:
          raise ValueError(f"config.model.{name}.{field}={value!r}{note} needs "
                           f"config.{self.field}={name!r}, not {chosen!r}; allowed with "
                           f"{chosen!r}: {default}")
