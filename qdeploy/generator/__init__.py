"""The generator: one config (`qdeploy.toml`) in, every file a host needs out.

settings (the catalogue) → datatypes (parsers) → config (load, validate, per-node options) →
nodes (selectors, `%n %h %i %I`) → render (artifacts, argv) → filters (quoting) → tree (atomic
writes, --check/--diff) → docs (the README's config reference)."""
