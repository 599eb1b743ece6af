"""Alembic revisions, oldest first: ``r0001_baseline`` (the pre-Alembic schema), ``r0002_users``.

Example::

    mobile-mm db upgrade                 # applies every revision not applied yet
"""
