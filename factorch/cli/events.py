"""The training events' flags, read from the event registry (``factorch.training.events.EVENTS``).

Each registered event class declares its ``flag`` (``--decompose-at K``; a switch for an event
without an epoch) and its ``options`` (``--admm-rho``, ``--keep-if-faster``, ...; the options of
``Decomposing`` are shared by every decomposing event). ``factorch train`` offers the flags and the
options, ``factorch experiment`` the options only (its events are spelled in ``--scenarios``).
Every event gets the run's ``--method``/``--rank`` and the options it has; an option that no
configured event has is an error, never silently ignored.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional, Sequence

from factorch.cli.common import parse_methods, parse_rank
from factorch.training.events import EVENTS, Event, Option


def _options() -> list[Option]:
    """Every option of a registered event class, once (a shared option is one flag)."""
    found: list[Option] = []
    for cls in EVENTS.values():
        found += [o for o in cls.cli_options() if o.flag not in {f.flag for f in found}]
    return found


def _dest(o: Option) -> str:
    """Where argparse puts an option: named after its flag (two classes may have a setting of one
    name, e.g. a ``weight``, under different flags)."""
    return o.flag.lstrip("-").replace("-", "_")


def _flag_dest(cls: type[Event]) -> str:
    return "event_" + cls.token


def flag_of(dest: str) -> str:
    """The flag that sets ``args.<dest>`` (an event's flag; else ``--dest-with-dashes``)."""
    for cls in EVENTS.values():
        if cls.flag and dest == _flag_dest(cls):
            return cls.flag
    return "--" + dest.replace("_", "-")


def add_event_args(p: argparse.ArgumentParser, with_flags: bool) -> None:
    """The events' flags (``with_flags``: ``factorch train``) and their options."""
    if with_flags:
        g = p.add_argument_group("training events (each may be given once)")
        for cls in EVENTS.values():
            if not cls.flag:
                continue
            if cls.takes_epoch:
                g.add_argument(cls.flag, type=int, metavar="K", dest=_flag_dest(cls), help=cls.flag_help)
            else:
                g.add_argument(cls.flag, action="store_true", dest=_flag_dest(cls), help=cls.flag_help)
    g = p.add_argument_group("event settings (each applies to the events that have it)")
    for o in _options():
        if o.switch:
            g.add_argument(o.flag, dest=_dest(o), action=argparse.BooleanOptionalAction, default=None, help=o.help)
        elif o.field == "exclude":  # a tuple setting: the flag is repeated
            g.add_argument(o.flag, dest=_dest(o), action="append", metavar=o.metavar, help=o.help)
        else:
            g.add_argument(o.flag, dest=_dest(o), type=o.type, metavar=o.metavar, help=o.help)


def settings_for(args: argparse.Namespace) -> Callable[[type[Event]], dict[str, Any]]:
    """What the command line gives an event class: ``methods`` from ``--method``/``--rank``, and the
    value of each of its options (the option's ``cli_default`` when absent; None: the class's own
    default)."""
    methods = tuple(parse_methods(args.method, parse_rank(args.rank), args.rank_multiple))

    def of(cls: type[Event]) -> dict[str, Any]:
        settings: dict[str, Any] = {"methods": methods}
        for o in cls.cli_options():
            value = getattr(args, _dest(o), None)
            settings[o.field] = o.cli_default if value is None else tuple(value) if isinstance(value, list) else value
        return settings

    return of


def events_from_flags(args: argparse.Namespace) -> tuple[Event, ...]:
    """The events ``factorch train``'s flags ask for, in registration order."""
    settings = settings_for(args)
    events = []
    for cls in EVENTS.values():
        value = getattr(args, _flag_dest(cls), None) if cls.flag else None
        if value is None or value is False:
            continue
        events.append(cls.spelled(value if cls.takes_epoch else None, settings(cls)))
    return tuple(events)


def unused_options(args: argparse.Namespace, events: Sequence[Event], scenarios: bool = False) -> Optional[str]:
    """The error for options given that no configured event has (None: every one applies):
    ``--admm-rho need(s) --admm-until K`` (train), ``... apply to admm@K scenarios; none given``
    (experiment)."""
    unused: dict[tuple[type[Event], ...], list[str]] = {}
    for o in _options():
        if getattr(args, _dest(o), None) is None:
            continue
        owners = tuple(cls for cls in EVENTS.values() if o in cls.cli_options())
        if not any(isinstance(e, owners) for e in events):
            unused.setdefault(owners, []).append(o.flag)
    if not unused:
        return None
    owners, flags = next(iter(unused.items()))
    if scenarios:
        return f"{', '.join(flags)} apply to {' or '.join(cls.syntax() for cls in owners)} scenarios; none given"
    spelled = [cls.flag + (" K" if cls.takes_epoch else "") for cls in owners if cls.flag]
    return f"{', '.join(flags)} need(s) {' or '.join(spelled)}"
