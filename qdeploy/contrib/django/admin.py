"""The admin pages: task results (read from Redis) and periodic tasks (beat's schedule in Redis).

Both ModelAdmins replace every ORM view with their own (`get_urls`): their models have no
table. The admin's login, permissions (view/add/change/delete of the two models), CSRF
protection and messages are Django's; what the pages show and change is in store.py."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from qdeploy.contrib.django import store
from qdeploy.contrib.django.forms import PeriodicTaskForm
from qdeploy.contrib.django.models import PeriodicTask, TaskResult


class _RedisAdmin(admin.ModelAdmin):
    def _context(self, request, title: str, **extra) -> dict:
        return {**self.admin_site.each_context(request), "opts": self.model._meta, "title": title,
                "app_label": self.model._meta.app_label, **extra}

    def _app(self, request):
        try:
            return store.get_app()
        except (store.StoreError, ValueError) as exc:
            messages.error(request, str(exc))
            return None

    def _url(self, view: str, *args) -> str:
        return reverse(f"admin:qdeploy_{self.model._meta.model_name}_{view}", args=args)


@admin.register(TaskResult)
class TaskResultAdmin(_RedisAdmin):
    def get_urls(self):
        view = self.admin_site.admin_view
        return [path("", view(self.changelist_view), name="qdeploy_taskresult_changelist"),
                path("<path:object_id>/change/", view(self.change_view), name="qdeploy_taskresult_change")]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        app = self._app(request)
        q, task, state = request.GET.get("q", ""), request.GET.get("task", ""), request.GET.get("state", "")
        date = request.GET.get("date", "")
        try:
            page_no = int(request.GET.get("p", "1"))
        except ValueError:
            page_no = 1
        page = store.results(app, q, task, state if state in store.STATES else "",
                             date if date in store.DATES else "", page_no) if app else None
        if page is not None and page.error:
            messages.error(request, page.error)
        params = {"q": q, "task": task, "state": state, "date": date}
        return TemplateResponse(request, "qdeploy/admin/results.html", self._context(
            request, "Task results", page=page, params=params, states=store.STATES, dates=store.DATES,
            filters=_filters(params, page.names if page else [])))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        app = self._app(request)
        if app is None:
            return HttpResponseRedirect(self._url("changelist"))
        try:
            record = store.result(app, object_id)
        except store.StoreError as exc:
            raise Http404(str(exc)) from None
        return TemplateResponse(request, "qdeploy/admin/result.html",
                                self._context(request, f"Task {object_id}", record=record))


def _filters(params: dict, names: list[str]) -> list[dict]:
    """The sidebar: by task, by state, by date; each choice a link keeping the other filters."""
    from urllib.parse import urlencode

    def link(key, value):
        chosen = {k: v for k, v in params.items() if v and k != key}
        if value:
            chosen[key] = value
        return "?" + urlencode(chosen)

    groups = [("task", "By task", [(n, n) for n in names]), ("state", "By state", [(s, s) for s in store.STATES]),
              ("date", "By date", list(store.DATES.items()))]
    return [{"title": title, "choices": [{"label": "All", "url": link(key, ""), "selected": not params.get(key)}]
             + [{"label": label, "url": link(key, value), "selected": params.get(key) == value} for value, label in choices]}
            for key, title, choices in groups]


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(_RedisAdmin):
    def get_urls(self):
        view = self.admin_site.admin_view
        return [path("", view(self.changelist_view), name="qdeploy_periodictask_changelist"),
                path("add/", view(self.add_view), name="qdeploy_periodictask_add"),
                path("<path:object_id>/change/", view(self.change_view), name="qdeploy_periodictask_change")]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        app = self._app(request)
        schedule = store.Schedule(app) if app else None
        if request.method == "POST" and schedule is not None:
            return self._act(request, schedule)
        rows, broken, leader = schedule.rows() if schedule else ([], [], None)
        if schedule is not None and schedule.error:
            messages.warning(request, schedule.error)
        return TemplateResponse(request, "qdeploy/admin/periodic_tasks.html", self._context(
            request, "Periodic tasks", rows=rows, broken=broken, leader=leader,
            can_add=self.has_add_permission(request), can_change=self.has_change_permission(request),
            can_delete=self.has_delete_permission(request)))

    def _act(self, request, schedule: store.Schedule):
        action, name = request.POST.get("action", ""), request.POST.get("name", "")
        need = {"enable": self.has_change_permission, "disable": self.has_change_permission,
                "run": self.has_change_permission, "delete": self.has_delete_permission}.get(action)
        if need is None:
            messages.error(request, f"unknown action {action[:40]!r}")
        elif not need(request):
            raise PermissionDenied
        else:
            try:
                if action == "run":
                    messages.success(request, f"{name}: sent now as task {schedule.run_now(name)}")
                elif action == "delete":
                    schedule.delete(name)
                    messages.success(request, f"deleted {name}")
                else:
                    schedule.set_enabled(name, action == "enable")
                    messages.success(request, f"{action}d {name}")
            except store.StoreError as exc:
                messages.error(request, str(exc))
        return HttpResponseRedirect(self._url("changelist"))

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        return self._form(request, None)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not self.has_change_permission(request):
            raise PermissionDenied
        return self._form(request, object_id)

    def _form(self, request, name: str | None):
        app = self._app(request)
        if app is None:
            return HttpResponseRedirect(self._url("changelist"))
        schedule = store.Schedule(app)
        try:
            names = store.task_names(app)
        except store.StoreError as exc:
            messages.error(request, str(exc))
            names = sorted(n for n in app.tasks if not n.startswith("qdeploy."))
        initial = None
        if name is not None:
            spec = schedule.spec(name)
            if spec is None:
                messages.error(request, f"{name!r} is not a periodic task the admin can edit (the app's and "
                                        "qdeploy.toml's entries change with the code or the file)")
                return HttpResponseRedirect(self._url("changelist"))
            initial = PeriodicTaskForm.initial_from(name, spec)
            if initial.get("task") not in names:
                initial["task_custom"], initial["task"] = initial.get("task"), ""
        form = PeriodicTaskForm(request.POST or None, initial=initial, task_names=names, editing=name is not None)
        if request.method == "POST" and form.is_valid():
            try:
                schedule.save(form.cleaned_data["name"], form.spec_json or "", replace=name is not None,
                              enabled=form.cleaned_data.get("enabled", True))
            except store.StoreError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"saved {form.cleaned_data['name']}: running beats pick it up within "
                                          "beat.max_interval")
                return HttpResponseRedirect(self._url("changelist"))
        title = f"Change periodic task {name}" if name else "Add periodic task"
        return TemplateResponse(request, "qdeploy/admin/periodic_task_form.html",
                                self._context(request, title, form=form, editing=name is not None))
