"""The admin's form of a periodic task: a name, the task, one of three schedules (an interval, a
crontab line, a solar event), arguments as JSON and a few options; checked by beat's own
validation (`qdeploy.beat.entry.dynamic_spec`), so what the form takes beat runs."""

from __future__ import annotations

import json

from django import forms

from qdeploy.beat.entry import EntryError, check_name, dynamic_spec
from qdeploy.beat.solar import EVENTS

KINDS = (("interval", "Interval (every 30s, 5m, 1h30m...)"), ("crontab", "Crontab (minute hour day month weekday)"),
         ("solar", "Solar event (sunrise, sunset... at a place)"))


class PeriodicTaskForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Unique; shown in beat's log lines.")
    task = forms.ChoiceField(label="Task (registered)", required=False, choices=())
    task_custom = forms.CharField(label="Task (custom)", required=False, max_length=200,
                                  help_text="A task name the app does not register here (sent by name).")
    kind = forms.ChoiceField(label="Schedule", choices=KINDS, initial="interval")
    every = forms.CharField(label="Every", required=False, max_length=40, help_text="30s, 5m, 1h30m, or seconds.")
    cron = forms.CharField(label="Crontab", required=False, max_length=200, help_text='e.g. "*/15 * * * *" or @daily.')
    timezone = forms.CharField(label="Crontab time zone", required=False, max_length=64,
                               help_text="e.g. Asia/Shanghai; empty: beat's (timezone, else UTC).")
    solar_event = forms.ChoiceField(label="Solar event", required=False,
                                    choices=[("", "---------")] + [(e, e) for e in EVENTS])
    latitude = forms.FloatField(required=False, min_value=-90, max_value=90, help_text="North positive.")
    longitude = forms.FloatField(required=False, min_value=-180, max_value=180, help_text="East positive.")
    args = forms.CharField(label="Positional arguments", required=False, initial="[]",
                           widget=forms.Textarea(attrs={"rows": 2}), help_text='JSON array, e.g. [1, 9].')
    kwargs = forms.CharField(label="Keyword arguments", required=False, initial="{}",
                             widget=forms.Textarea(attrs={"rows": 2}), help_text='JSON object, e.g. {"x": 1}.')
    queue = forms.CharField(required=False, max_length=200, help_text="Empty: the task's (or task_routes').")
    expires = forms.FloatField(label="Expires (seconds)", required=False, min_value=0.001,
                               help_text="Drop a run that has not started this long after it was due.")
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, task_names=(), editing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["task"].choices = [("", "---------")] + [(n, n) for n in task_names]
        if editing:
            self.fields["name"].disabled = True
        self.spec_json: str | None = None

    def clean_name(self):
        name = self.cleaned_data["name"]
        try:
            return check_name(name)
        except EntryError as exc:
            raise forms.ValidationError(str(exc)) from None

    def _json(self, field: str, kind: type):
        text = (self.cleaned_data.get(field) or "").strip() or ("[]" if kind is list else "{}")
        try:
            value = json.loads(text)
        except ValueError:
            self.add_error(field, "Not JSON.")
            return None
        if not isinstance(value, kind):
            self.add_error(field, f"Expected a JSON {'array' if kind is list else 'object'}.")
            return None
        return value

    def clean(self):
        data = super().clean()
        task = (data.get("task_custom") or "").strip() or data.get("task")
        if not task:
            self.add_error("task", "Choose a registered task or type a custom one.")
        kind = data.get("kind")
        if kind == "interval":
            schedule = {"every": (data.get("every") or "").strip()}
            if not schedule["every"]:
                self.add_error("every", "Give the interval.")
        elif kind == "crontab":
            schedule = {"cron": (data.get("cron") or "").strip()}
            if data.get("timezone"):
                schedule["timezone"] = data["timezone"].strip()
            if not schedule["cron"]:
                self.add_error("cron", "Give the crontab line.")
        else:
            schedule = {"solar": data.get("solar_event") or "", "lat": data.get("latitude"), "lon": data.get("longitude")}
            for field, value in (("solar_event", schedule["solar"]), ("latitude", schedule["lat"]),
                                 ("longitude", schedule["lon"])):
                if value in (None, ""):
                    self.add_error(field, "Required for a solar schedule.")
        args, kwargs = self._json("args", list), self._json("kwargs", dict)
        if self.errors or not data.get("name"):
            return data
        try:
            self.spec_json = dynamic_spec(data["name"], task, schedule, args=args, kwargs=kwargs,
                                          queue=(data.get("queue") or "").strip() or None, expires=data.get("expires"))
        except EntryError as exc:
            raise forms.ValidationError(str(exc).split(": ", 1)[-1]) from None
        return data

    @staticmethod
    def initial_from(name: str, spec: dict) -> dict:
        schedule = spec.get("schedule")
        initial = {"name": name, "task": spec.get("task"), "args": json.dumps(spec.get("args", [])),
                   "kwargs": json.dumps(spec.get("kwargs", {})), "enabled": spec.get("enabled", True),
                   "queue": (spec.get("options") or {}).get("queue", ""),
                   "expires": (spec.get("options") or {}).get("expires")}
        if isinstance(schedule, dict) and "cron" in schedule:
            initial.update(kind="crontab", cron=schedule["cron"], timezone=schedule.get("timezone", ""))
        elif isinstance(schedule, dict) and "solar" in schedule:
            initial.update(kind="solar", solar_event=schedule["solar"], latitude=schedule.get("lat"),
                           longitude=schedule.get("lon"))
        else:
            every = schedule.get("every") if isinstance(schedule, dict) else schedule
            initial.update(kind="interval", every=str(every))
        return initial
