"""Installing packages from build caches: :mod:`.plan` (catalog, DAG, verification),
:mod:`.stage` (fetch, extract, relocate, publish; the entry points ``install`` and
``download``) and :mod:`.workers` (staging a plan's packages, -j at a time in forked
processes)."""
