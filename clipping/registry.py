"""Name -> clipper registry, plugin discovery and :func:`make_clipper`.

A clipper is named in one of three ways (the same strings work in ``make_clipper``, ``--policy-clip``
specs and ``config.yaml``):

1. **Built-in**: a key of :data:`CLIPPERS` (``none, norm, value, autoclip, zclip, agc, quantile``),
   case-insensitive.
2. **Entry point**: a name registered by an installed distribution in the entry-point group
   ``perpclip.clippers`` (:data:`ENTRY_POINT_GROUP`), e.g. in the plugin's ``pyproject.toml``::

       [project.entry-points."perpclip.clippers"]
       myclip = "mypkg.clippers:MyClipper"

   after which ``make_clipper("myclip", ...)`` builds it. Built-in names win over an entry point of the
   same name (a plugin cannot silently replace ``zclip``); entry-point names are matched exactly first,
   then case-insensitively.
3. **Import path** ``module:Class`` or ``package.module:Class`` (anything with a ``:``), e.g.
   ``make_clipper("mypkg.clippers:MyClipper", alpha=0.9)``: the module is imported and the attribute
   looked up (dotted attributes such as ``module:Outer.Inner`` work too). Case-sensitive. No
   installation needed: the module only has to be importable (installed, or on ``PYTHONPATH``).

Both plugin forms resolve by import alone, so they work identically in freshly spawned worker processes
(``train.py compare`` workers, Ray actors) as long as the module is importable there - an installed
plugin always is; a loose module needs its folder on ``PYTHONPATH`` (inherited by child processes), not a
``sys.path`` edit made at run time in the parent.

A plugin class must subclass :class:`~clipping.Clipper` (recommended: it inherits the non-finite safety
rule, the one-sync global norm, ``state_dict`` checks) or implement its protocol: a string class
attribute ``name``, a ``config`` attribute/property (the constructor keywords, YAML-safe), and methods
``clip(parameters) -> ClipStats``, ``state_dict()``, ``load_state_dict(state)`` and ``reset()``. Anything
else is rejected with a ``ValueError`` that lists the known names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

from clipping.agc import AdaptiveGradientClip
from clipping.autoclip import AutoClip
from clipping.base import Clipper, did_you_mean
from clipping.fixed import NoClip, NormClip, ValueClip
from clipping.quantile import QuantileTrackingClip
from clipping.zclip import ZClip

__all__ = ["CLIPPERS", "ENTRY_POINT_GROUP", "available_clippers", "make_clipper", "resolve_clipper"]

#: Clipper name -> class (the built-in names accepted by :func:`make_clipper` and the CLI).
CLIPPERS: dict[str, type[Clipper]] = {
    cls.name: cls
    for cls in (NoClip, NormClip, ValueClip, AutoClip, ZClip, AdaptiveGradientClip, QuantileTrackingClip)
}

#: Entry-point group in which installed distributions register extra clippers (name -> ``module:Class``).
ENTRY_POINT_GROUP = "perpclip.clippers"

#: Methods a clipper that does not subclass :class:`Clipper` must provide.
_PROTOCOL_METHODS = ("clip", "state_dict", "load_state_dict", "reset")


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The ``perpclip.clippers`` entry points of the installed distributions, by name (first one wins)."""
    out: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep)
    return out


def available_clippers() -> dict[str, str]:
    """Every clipper name :func:`make_clipper` knows without an import path: built-ins and entry points.

    Returns:
        Name -> where it comes from (``"built-in"`` or the entry point's ``module:Class`` value). An entry
        point that shadows a built-in name is left out (the built-in wins).
    """
    out = {name: "built-in" for name in CLIPPERS}
    for name, ep in _entry_points().items():
        out.setdefault(name, ep.value)
    return out


def _known_names_text() -> str:
    names = ", ".join(available_clippers())
    return (f"valid names: {names}; or a plugin 'module:Class' import path, or a name registered in the "
            f"{ENTRY_POINT_GROUP!r} entry-point group")


def _import_path(path: str) -> Any:
    module_name, _, attr_path = path.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not module_name or not attr_path:
        raise ValueError(
            f"bad clipper import path {path!r}: expected 'module:Class' or 'package.module:Class', "
            f"e.g. 'mypkg.clippers:MyClipper'"
        )
    if module_name.lower() in CLIPPERS and "." not in module_name:
        raise ValueError(
            f"clipper {path!r}: {module_name!r} is a built-in clipper, and {attr_path!r} is not a key=value "
            f"keyword; write e.g. '{module_name.lower()}:{attr_path}=...' (a plugin is 'module:Class'). "
            f"{_known_names_text()}"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"clipper {path!r}: cannot import module {module_name!r} ({type(err).__name__}: {err}). Fix: "
            "install the plugin, or put its folder on PYTHONPATH (a sys.path edit does not reach worker "
            "processes)."
        ) from err
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attr_path.split(".")[:i]])
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise ValueError(
                f"clipper {path!r}: {where!r} has no attribute {part!r}{did_you_mean(part, public)}"
            )
        obj = getattr(obj, part)
    return obj


def _check_clipper_class(obj: Any, origin: str) -> type:
    if not isinstance(obj, type):
        raise ValueError(
            f"clipper {origin!r} resolves to {obj!r}, which is not a class; it must be a subclass of "
            f"clipping.Clipper (or implement its protocol). {_known_names_text()}"
        )
    if issubclass(obj, Clipper):
        return obj
    missing = [m for m in _PROTOCOL_METHODS if not callable(getattr(obj, m, None))]
    if not isinstance(getattr(obj, "name", None), str):
        missing.append("name (a str class attribute)")
    if not hasattr(obj, "config"):
        missing.append("config")
    if missing:
        raise ValueError(
            f"clipper {origin!r} resolves to class {obj.__module__}.{obj.__qualname__}, which neither "
            f"subclasses clipping.Clipper nor implements its protocol (missing: {', '.join(missing)}). "
            f"{_known_names_text()}"
        )
    return obj


def resolve_clipper(name: str) -> type:
    """The clipper class a name stands for (built-in, entry point or ``module:Class``), validated.

    Args:
        name: See the module docstring for the three forms.

    Returns:
        The class (not an instance).

    Raises:
        ValueError: Unknown name (with the closest match and every known name), unimportable module,
            missing attribute, or an object that is not a clipper class.
    """
    if not isinstance(name, str):
        raise ValueError(f"clipper name must be a string; {_known_names_text()}; got {name!r}")
    text = name.strip()
    if ":" in text:
        return _check_clipper_class(_import_path(text), text)
    key = text.lower()
    if key in CLIPPERS:
        return CLIPPERS[key]
    eps = _entry_points()
    ep = eps.get(text) or next((e for n, e in eps.items() if n.lower() == key), None)
    if ep is None:
        known = [*CLIPPERS, *eps]
        raise ValueError(f"unknown clipper {name!r}{did_you_mean(key, known)}; {_known_names_text()}")
    try:
        obj = ep.load()
    except Exception as err:  # a broken plugin must not look like an unknown name
        raise ValueError(
            f"clipper {name!r}: loading entry point {ep.value!r} of group {ENTRY_POINT_GROUP!r} failed "
            f"({type(err).__name__}: {err})"
        ) from err
    return _check_clipper_class(obj, f"{name} ({ep.value})")


def make_clipper(name: str, **kwargs: Any) -> Clipper:
    """Build a clipper by name.

    Args:
        name: A built-in name of ``CLIPPERS`` (``none, norm, value, autoclip, zclip, agc, quantile``;
            case-insensitive), a name from the ``perpclip.clippers`` entry-point group, or a
            ``module:Class`` import path (see the module docstring).
        **kwargs: The clipper's constructor keywords (see each class; ``clipper.config`` lists them).

    Returns:
        A fresh clipper (a :class:`Clipper`, or a plugin implementing its protocol).

    Raises:
        ValueError: Unknown name, unknown or missing keyword, or an invalid value - the message lists
            the valid choices and the closest match.

    Example:
        >>> clipper = make_clipper("zclip", z_thresh=3.0)
        >>> clipper = make_clipper("mypkg.clippers:MyClipper", alpha=0.9)  # doctest: +SKIP
        >>> stats = clipper.clip(model.parameters())  # doctest: +SKIP
    """
    cls = resolve_clipper(name)
    label = name.strip() if ":" in name else getattr(cls, "name", name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [p for p, spec in params.items() if p != "self"
             and spec.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if not takes_any:
        for kw in kwargs:
            if kw not in valid:
                raise ValueError(
                    f"clipper {label!r} got an unknown keyword {kw!r}{did_you_mean(kw, valid)}; "
                    f"valid keywords: {', '.join(valid) if valid else '(none)'}"
                )
    missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise ValueError(f"clipper {label!r} needs the keyword(s) {', '.join(missing)}, e.g. "
                         f"make_clipper({label!r}, {missing[0]}=1.0)")
    return cls(**kwargs)
