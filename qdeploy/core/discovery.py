"""Finding the app and its tasks the way Celery does.

`find_app('proj')` — what `-A proj` means:

    proj:app / proj.celery:app     module:attribute, the attribute may be dotted
    proj.tasks.app                 a dotted path whose last part is an attribute
    proj                           proj.app, else proj.celery (an App), else the package's
                                   proj.celery module (its app), else the only App in proj

The current directory is put on `sys.path` first (Celery's `import_from_cwd`), so a project
directory needs no PYTHONPATH. `autodiscover(app)` imports `<package>.tasks` of the packages
`app.autodiscover_tasks()` named (Django's INSTALLED_APPS when none), and fixups (Django's:
`qdeploy.contrib.django.fixup`) are installed before, as Celery's are.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdeploy.core.app import App

FIXUPS = ("qdeploy.contrib.django.fixup:fixup",)


class AppNotFound(ValueError):
    """`-A` names no app (or two): one line for the operator."""


def cwd_on_path() -> None:
    """The current directory first on sys.path (where Celery looks for `-A proj`)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path[:1]:
        sys.path.insert(0, cwd)


def _import(name: str, spec: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise  # the module itself is missing: the caller may try another reading
        raise AppNotFound(f"cannot import app {spec!r}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the app's module raising while importing
        raise AppNotFound(f"cannot import app {spec!r}: {type(exc).__name__}: {exc}") from None


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def find_app(spec: str) -> App:
    from qdeploy.core.app import App

    if not isinstance(spec, str) or not spec.strip():
        raise AppNotFound(f"-A needs a module or module:attribute, got {spec!r}")
    cwd_on_path()
    module_name, sep, attr = spec.partition(":")
    if sep:
        try:
            module = _import(module_name, spec)
        except ModuleNotFoundError as exc:
            raise AppNotFound(f"cannot import app {spec!r}: ModuleNotFoundError: {exc}") from None
        try:
            found = _attr(module, attr or "app")
        except AttributeError:
            raise AppNotFound(f"{spec!r} is not a qdeploy App: {module_name} has no attribute {attr or 'app'!r}") from None
        if not isinstance(found, App):
            raise AppNotFound(f"{spec!r} is not a qdeploy App (it is a {type(found).__name__})")
        return found
    try:
        module = _import(spec, spec)
    except ModuleNotFoundError as exc:
        parent, _, last = spec.rpartition(".")
        if parent and exc.name == spec:  # proj.tasks.app: module proj.tasks, attribute app
            try:
                found = getattr(_import(parent, spec), last, None)
            except ModuleNotFoundError:
                found = None
            if isinstance(found, App):
                return found
            if found is not None and not isinstance(found, types.ModuleType):
                raise AppNotFound(f"{spec!r} is not a qdeploy App (it is a {type(found).__name__})") from None
        raise AppNotFound(f"cannot import app {spec!r}: ModuleNotFoundError: {exc} {_where()}") from None
    return _app_in(module, spec)


def _where() -> str:
    return f"(looked in the current directory {os.getcwd()} and sys.path)"


def _app_in(module: types.ModuleType, spec: str) -> App:
    from qdeploy.core.app import App

    for name in ("app", "celery"):
        found = getattr(module, name, None)
        if isinstance(found, App):
            return found
    if hasattr(module, "__path__"):  # a package: its celery module (proj/celery.py), as Celery looks
        try:
            sub = importlib.import_module(f"{module.__name__}.celery")
        except ModuleNotFoundError as exc:
            if exc.name != f"{module.__name__}.celery":
                raise AppNotFound(f"cannot import app {spec!r}: ModuleNotFoundError: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - proj/celery.py raising while importing
            raise AppNotFound(f"cannot import app {spec + '.celery'!r}: {type(exc).__name__}: {exc}") from None
        else:
            try:
                return _app_in(sub, spec + ".celery")
            except AppNotFound:
                pass
    apps = {name: value for name, value in vars(module).items() if isinstance(value, App)}
    unique = {id(a): n for n, a in apps.items()}
    if len(unique) == 1:
        return next(iter(apps.values()))
    if len(unique) > 1:
        names = ", ".join(f"{module.__name__}:{n}" for n in sorted(unique.values()))
        raise AppNotFound(f"{spec!r} holds {len(unique)} qdeploy Apps ({names}): name one with -A module:attribute")
    raise AppNotFound(f"{spec!r} names no qdeploy App: no attribute 'app' or 'celery', no module "
                      f"{module.__name__}.celery with one, and no App in {module.__name__} "
                      "(expected 'module' or 'module:attribute')")


def path_of(app: App) -> str | None:
    """A `module:attribute` that names `app` (for `manage.py qdeploy`), or None."""
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.startswith(("qdeploy.", "_")):
            continue
        try:
            for name, value in vars(module).items():
                if value is app and not name.startswith("_"):
                    return f"{module_name}:{name}"
        except TypeError:
            continue
    return None


# -- tasks -----------------------------------------------------------------------------------


def install_fixups(app: App) -> list:
    """Celery's fixups: each `module:function` is called with the app; what it returns (not
    None) is kept. Django's installs itself when DJANGO_SETTINGS_MODULE is set."""
    installed = []
    for path in FIXUPS:
        module, _, func = path.partition(":")
        try:
            fixup = getattr(importlib.import_module(module), func)
        except ImportError:
            continue
        result = fixup(app)
        if result is not None:
            installed.append(result)
    return installed


def related_modules(app: App) -> list[tuple[str, str]]:
    """The `<package>.<related_name>` modules autodiscover_tasks() asked for."""
    out: list[tuple[str, str]] = []
    for packages, related_name in app._autodiscover:
        if packages is None:
            packages = django_apps()
        elif callable(packages):
            packages = packages()
        for package in packages or ():
            out.append((package, related_name))
    return out


def django_apps() -> list[str]:
    """The packages of Django's INSTALLED_APPS (their AppConfig names), when Django is set up
    (DJANGO_SETTINGS_MODULE); none otherwise."""
    if "DJANGO_SETTINGS_MODULE" not in os.environ:
        return []
    try:
        from django.apps import apps
    except ImportError:
        return []
    if not apps.ready:
        import django

        django.setup()
    return [config.name for config in apps.get_app_configs()]


def import_related(package: str, related_name: str) -> types.ModuleType | None:
    """Import `package.related_name`; None if that module does not exist (Celery skips those),
    an error from inside it is raised."""
    name = f"{package}.{related_name}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name in (name, package) or (exc.name and name.startswith(exc.name + ".")):
            return None
        raise
