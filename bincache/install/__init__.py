"""Installing packages from build caches: :mod:`.plan` (catalog, DAG, verification) and
:mod:`.stage` (fetch, extract, relocate, publish; the entry points ``install`` and
``download``)."""
