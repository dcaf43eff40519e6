"""The clipper-spec grammar: ``name[:key=value,...]`` and lists of policy/value pairs of them.

One clipper (``--clip``, ``--policy-clip``, ``--value-clip``)::

    part  := name [':' key=value (',' key=value)*]
    name  := builtin_or_entry_point_name | module.path ':' Class

A plugin class is named by its import path (``clipping.make_clipper`` imports it): ``mypkg.mod:MyClipper`` or
``mypkg.mod:MyClipper:alpha=0.9``. The segment after the first ``:`` is read as the class when it is a dotted
Python name without ``=`` (a keyword always has one), so ``zclip:z_thresh=2`` is still the built-in with a
keyword. Built-in and entry-point names are lowercased; an import path keeps its case (Python names are
case-sensitive).

A list of compared configurations (``--clips`` of ``train.py compare``)::

    clips := spec ((',' | ';') spec)*
    spec  := part ['/' part]                  policy part, optional value part (default: same as policy)

Commas separate both specs and keyword arguments. A comma-separated token that contains ``=`` with no ``:``
before it (``alpha=0.9``) continues the part before it; any other token (``zclip``, ``norm:max_norm=0.5``)
starts a new spec. So ``norm:max_norm=0.05,norm:max_norm=0.5,zclip:z_thresh=2.0,warmup=10`` is three specs,
the last one with two keywords. ``;`` always starts a new spec. Commas, ``;`` and ``/`` inside brackets or
quotes (``mode=[1,2]``) do not split.

This module owns the grammar only, not the meaning of a value: the caller passes ``parse_value`` (perpclip
passes ``envs.spec.parse_value``, the one value parser of every ``key=value`` spec, so ``none``, ``1e-3``,
``[1,2]`` or ``.inf`` mean the same in a clipper spec as anywhere else). ``clipping`` may not import ``envs``
(layering), and ``envs`` may not import this package (it imports torch), hence the argument rather than a
second parser. Without it values stay the raw strings. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["ClipSpecError", "parse_clip_part", "parse_clip_specs", "split_outside_brackets"]

ValueParser = Callable[[str], Any]
Part = tuple[str, list[tuple[str, Any]]]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
EXAMPLE = "e.g. --clips none,norm:max_norm=0.5,zclip:z_thresh=2.0"


class ClipSpecError(ValueError):
    """A clipper spec that does not follow the grammar; the message names the bad token."""


def _raw(text: str) -> str:
    return text.strip()


def split_outside_brackets(text: str, seps: str) -> list[tuple[str, str]]:
    """Split on any character of ``seps`` outside brackets/quotes: ``[(piece, separator_before)]``."""
    out: list[tuple[str, str]] = []
    depth, quote, cur, before = 0, "", [], ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch in seps and depth == 0:
            out.append(("".join(cur), before))
            cur, before = [], ch
            continue
        cur.append(ch)
    out.append(("".join(cur), before))
    return out


def _kv(text: str, *, whole: str, token: str, parse_value: ValueParser, where: str) -> tuple[str, Any]:
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not _KEY.match(key) or not raw.strip():
        raise ClipSpecError(
            f"{where}: {token!r} in {whole!r}: expected key=value with a Python identifier as key "
            f"(e.g. max_norm=0.5), got {text!r}"
        )
    return key, parse_value(raw)


def _split_name(piece: str) -> tuple[str, str, str, bool]:
    """``(name, ':' or '', rest, is_import_path)``: ``mod:Cls[:kw]`` when the 2nd segment is a dotted
    identifier (no ``=``); anything else after the first ``:`` is keywords (``norm:0.5`` fails as one)."""
    first, sep, rest = piece.partition(":")
    if sep:
        second, sep2, rest2 = rest.partition(":")
        if "=" not in second and _DOTTED.match(second.strip()):
            return f"{first.strip()}:{second.strip()}", sep2, rest2, True
    return first.strip(), sep, rest, False


def _part(piece: str, *, whole: str, parse_value: ValueParser, where: str, all_kwargs: bool) -> Part:
    name, sep, rest, plugin = _split_name(piece)
    if plugin:
        module, _, cls = name.partition(":")
        if not (_DOTTED.match(module) and _DOTTED.match(cls)):
            raise ClipSpecError(
                f"{where}: {piece!r} in {whole!r}: a plugin clipper is named 'module.path:Class' (Python "
                f"identifiers separated by dots), optionally followed by ':key=value,...', e.g. "
                f"mypkg.clippers:MyClipper:alpha=0.9; got {name!r}"
            )
    elif not _NAME.match(name):
        raise ClipSpecError(
            f"{where}: {piece!r} in {whole!r} does not start with a clipper name; expected "
            f"name[:key=value,...] or module.path:Class[:key=value,...], {EXAMPLE}"
        )
    kwargs: list[tuple[str, Any]] = []
    if sep:
        if not rest.strip():
            raise ClipSpecError(
                f"{where}: {piece!r} in {whole!r} has ':' but no key=value after it; {EXAMPLE}"
            )
        items = [p for p, _ in split_outside_brackets(rest, ",")] if all_kwargs else [rest]
        for item in items:
            kwargs.append(_kv(item, whole=whole, token=piece, parse_value=parse_value, where=where))
    return (name if plugin else name.lower()), kwargs


def parse_clip_part(text: str, parse_value: ValueParser = _raw, *, where: str = "clipper spec") -> Part:
    """``"zclip:z_thresh=2.0,alpha=0.9"`` -> ``("zclip", [("z_thresh", v), ("alpha", v)])``.

    Everything after the name's ``:`` is keyword arguments; values go through ``parse_value``. A plugin
    import path keeps its case: ``"pkg.mod:My:k=1"`` -> ``("pkg.mod:My", [("k", v)])``.

    Raises:
        ClipSpecError: no name, or an item that is not ``key=value``.
    """
    text = str(text)
    if not text.strip():
        raise ClipSpecError(f"{where} is empty; expected name[:key=value,...], e.g. zclip:z_thresh=2.0")
    return _part(text, whole=text, parse_value=parse_value, where=where, all_kwargs=True)


def _is_kwarg_token(piece: str) -> bool:
    eq = piece.find("=")
    colon = piece.find(":")
    return eq >= 0 and (colon < 0 or colon > eq)


def parse_clip_specs(
    text: str, parse_value: ValueParser = _raw, *, where: str = "--clips"
) -> list[list[Part]]:
    """Split one ``--clips`` value into specs, each a list of one (policy = value) or two parts.

    Raises:
        ClipSpecError: naming the offending token (empty entries, a keyword with no clipper before it, more
            than one ``/``, a bad ``key=value``).
    """
    whole = str(text)
    if not whole.strip():
        raise ClipSpecError(f"{where} is empty; {EXAMPLE}")
    specs: list[list[Part]] = []
    started_here = False
    for pos, (token, before) in enumerate(split_outside_brackets(whole, ",;")):
        if before == ";":
            started_here = False
        token = token.strip()
        if not token:
            raise ClipSpecError(
                f"{where}: empty entry (token {pos + 1}) in {whole!r}; remove the extra ',' or ';'"
            )
        pieces = [p for p, _ in split_outside_brackets(token, "/")]
        if len(pieces) > 2:
            raise ClipSpecError(
                f"{where}: {token!r} in {whole!r} has more than one '/'; write policy_spec/value_spec"
            )
        first, *second = pieces
        if not first.strip():
            raise ClipSpecError(f"{where}: {token!r} in {whole!r} has no policy clipper before '/'")
        if _is_kwarg_token(first):
            if not started_here:
                raise ClipSpecError(
                    f"{where}: {first!r} in {whole!r} is a keyword with no clipper before it; "
                    f"attach it to a name, e.g. 'norm:{first.strip()}'"
                )
            kv = _kv(first, whole=whole, token=token, parse_value=parse_value, where=where)
            specs[-1][-1][1].append(kv)
        else:
            specs.append(
                [_part(first, whole=whole, parse_value=parse_value, where=where, all_kwargs=False)]
            )
            started_here = True
        if second:
            if len(specs[-1]) == 2:
                raise ClipSpecError(f"{where}: spec ending in {token!r} in {whole!r} has more than one '/'")
            if _is_kwarg_token(second[0]) or not second[0].strip():
                raise ClipSpecError(
                    f"{where}: after '/' in {token!r} in {whole!r} expected a value clipper name[:key=value]"
                )
            specs[-1].append(
                _part(second[0], whole=whole, parse_value=parse_value, where=where, all_kwargs=False)
            )
    return specs
