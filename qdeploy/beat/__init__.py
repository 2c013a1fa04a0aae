"""The beat service, shaped like `qdeploy.worker`: schedule maths (`schedule`, `fields`),
entries (`entry`), the Redis side (`store`), the loop (`scheduler`) and the boot (`boot`)."""
