"""A string-keyed registry of named variants.

Every family of interchangeable parts (heads, losses, attention/fusion/residual strategies, explainers, logits
methods, masking functions, CLI commands, ...) lives in one :class:`Registry`. A variant is added with a decorator,
and configs name it::

    HEADS = Registry("head")

    @HEADS.register("softmin")
    class SoftminHead(nn.Module):
        def __init__(self, in_dim: int, beta_init: float = 5.0): ...

    head = HEADS.build({"name": "softmin", "beta_init": 3.0}, in_dim=96)

``build`` takes a spec (a name, or a mapping with a ``name`` key and keyword arguments) plus context keyword
arguments that the caller knows (channel counts, spatial dims); spec values win over nothing, context values are
filled in by the caller and must not be repeated in the spec.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from survival3d.errors import ConfigError

__all__ = ["Registry", "did_you_mean"]

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str], *, prefix: str = "") -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or an empty string when nothing is close.

    ``prefix`` is put in front of the suggestion, so that a nested config key is suggested in full
    (``did_you_mean("dpeth", keys, prefix="model.")`` → ``" Did you mean 'model.depth'?"``)."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=1, cutoff=0.6)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A named collection of constructors (classes or functions) keyed by lower-case strings.

    Args:
        kind: what the registry holds, used in error messages ("head", "loss", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str, obj: Callable[..., T] | None = None, *, override: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` this returns a decorator.

        Raises:
            ValueError: when ``name`` is taken (unless ``override``) or not a non-empty string.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: name must be a non-empty string, got {name!r}.")
        key = name.lower()

        def _add(o: Callable[..., T]) -> Callable[..., T]:
            if key in self._items and not override and self._items[key] is not o:
                raise ValueError(f"{self.kind} '{key}' is already registered ({self._items[key]!r}).")
            self._items[key] = o
            return o

        return _add if obj is None else _add(obj)

    def get(self, name: str) -> Callable[..., T]:
        """Return the constructor registered under ``name``.

        Raises:
            ConfigError: for an unknown name, listing the valid names with a did-you-mean.
        """
        key = str(name).lower()
        if key not in self._items:
            raise ConfigError(
                f"unknown {self.kind} '{name}'.{did_you_mean(key, self._items)} "
                f"Valid {self.kind} names: {', '.join(self.keys())}."
            )
        return self._items[key]

    def build(self, spec: str | Mapping[str, Any], **context: Any) -> T:
        """Instantiate a registered variant.

        Args:
            spec: a registered name, or a mapping ``{"name": ..., **kwargs}`` (a dict, dataclass-as-dict or
                OmegaConf ``DictConfig``).
            context: keyword arguments supplied by the caller (e.g. ``channels=64``).

        Raises:
            ConfigError: unknown name, a missing ``name`` key, or a spec key that clashes with a context key.
        """
        name, kwargs = self.split_spec(spec)
        clash = sorted(set(kwargs) & set(context))
        if clash:
            raise ConfigError(f"{self.kind} '{name}': keys {clash} are set by the caller and cannot be configured.")
        return self.get(name)(**kwargs, **context)

    def split_spec(self, spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """``"name"`` or ``{"name": ..., **kwargs}`` → ``(name, kwargs)``.

        Raises:
            ConfigError: a mapping without ``name``, or a spec that is neither a string nor a mapping.
        """
        if isinstance(spec, str):
            return spec, {}
        if isinstance(spec, Mapping) or hasattr(spec, "items"):
            kwargs = {str(k): v for k, v in dict(spec.items()).items()}
            if "name" not in kwargs:
                raise ConfigError(f"{self.kind} spec {kwargs!r} has no 'name' key.")
            return kwargs.pop("name"), kwargs
        raise ConfigError(f"{self.kind} spec must be a name or a mapping with 'name', got {spec!r}.")

    def build_with_context(self, spec: str | Mapping[str, Any], **context: Any) -> T:
        """Like :meth:`build`, but pass only the context keywords the chosen constructor accepts.

        Lets a caller offer optional context (``num_heads``, ``img_size``) that only some variants use, without
        every variant having to swallow unknown keywords. A keyword that the spec sets explicitly wins over
        context; a spec option the constructor does not take is a :class:`ConfigError` listing the valid ones.
        """
        name, kwargs = self.split_spec(spec)
        ctor = self.get(name)
        params = inspect.signature(ctor).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in context.items() if (takes_any or k in params) and k not in kwargs}
        unknown = sorted(k for k in kwargs if not takes_any and k not in params)
        if unknown:
            valid = [k for k in params if k not in ("self", *context)]
            raise ConfigError(f"{self.kind} '{name}' has no option(s) {unknown}; valid options: {valid}.")
        return ctor(**kwargs, **extra)

    def keys(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a shell-style ``pattern`` (e.g. ``"*attention*"``)."""
        names = sorted(self._items)
        return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.keys()})"
