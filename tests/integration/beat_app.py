"""An app for `qdeploy beat` whose schedule comes from `on_after_configure` (seed 004's
"old scheme") and whose `beat_init` receiver records that it ran, in Redis."""

import os

from qdeploy import App, signals

app = App("btest", broker=os.environ.get("QDEPLOY_BROKER"), namespace=os.environ.get("QDEPLOY_NAMESPACE", "qdeploy"))


@app.on_after_configure.connect
def setup_periodic_tasks(sender, **kwargs):
    sender.add_periodic_task(1.0, tick.s("hello"), name="tick every second", expires=10)


@app.task(name="b.tick")
def tick(arg):
    return arg


@signals.beat_init.connect
def beat_started(sender=None, **kwargs):
    app.transport.client.set(f"{app.namespace}:test:beat_init", type(sender).__name__)
