"""Deployment: `.deb`/`.rpm` packages (`package`) and `qdeploy verify`'s testinfra suite
(`verify`, `verify_suite`)."""
