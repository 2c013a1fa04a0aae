"""Integrations, each an optional extra: `qdeploy.contrib.django` (`pip install 'qdeploy[django]'`),
`qdeploy.contrib.flask` (`qdeploy[flask]`). The core never imports them; a fixup is found by name
(qdeploy.core.discovery.FIXUPS), as Celery finds its Django fixup."""
