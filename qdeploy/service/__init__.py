"""What both long-running services (worker, beat) share: the boot order (`boot`), daemon duties
(`daemon`: pid file, dirs, privileges, --detach), logging (`logs`) and systemd notify
(`sdnotify`)."""
