"""The database schema's history: Alembic revisions shipped inside the package.

``env.py`` runs them on a connection handed over by :mod:`mobile_multimodal.store.migrate`
(never from an ``alembic.ini``: the service, ``mobile-mm db upgrade`` and the tests all go
through ``Database.upgrade``, which holds the schema lock). Each revision also writes its
number into ``schema_version``, which backups record and ``db verify`` prints.

Example::

    from mobile_multimodal.store import Database
    Database(url).upgrade("head")        # what the service does at start
"""
