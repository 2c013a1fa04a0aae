"""`python manage.py qdeploy worker|beat|status|... [options]`: the qdeploy command line, with the
project's app as `-A` (settings.QDEPLOY_APP, else the app the project imports, as in Celery's
layout: proj/__init__.py's `from .celery import app as celery_app`)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run qdeploy (worker, beat, status, inspect...) with this project's app."

    def run_from_argv(self, argv):
        from qdeploy.cli import main

        args = list(argv[2:])
        if not any(a in ("-A", "--app") or a.startswith(("-A", "--app=")) for a in args):
            args = ["-A", self.app_path(), *args]
        prog = f"{os.path.basename(argv[0])} qdeploy"
        main.main(args=args, prog_name=prog)

    def handle(self, *args, **options):  # pragma: no cover - run_from_argv does the work
        raise CommandError("run it from the command line: python manage.py qdeploy worker -l INFO")

    @staticmethod
    def app_path() -> str:
        from django.conf import settings

        from qdeploy.core.app import current_app
        from qdeploy.core.discovery import path_of

        path = getattr(settings, "QDEPLOY_APP", None)
        if path:
            return path
        app = current_app()
        found = path_of(app) if app is not None else None
        if not found:
            raise CommandError("no qdeploy App found: import it in your project's __init__.py "
                               "(from .celery import app as celery_app) or set QDEPLOY_APP = 'proj.celery:app'")
        return found
