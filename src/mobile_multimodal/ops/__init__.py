"""Operator workflows: what `mobile-mm keys ...`, `db ...` and `users ...` do.

This layer sits above serving and below the CLI: a workflow combines the store (backups,
migrations, retention, users) with security (the audit trail), which neither may import the
other way round. Each function returns the text to print and whether it succeeded; the CLI only
parses options and prints.

Example::

    from mobile_multimodal.ops.db_commands import db_backup
    text, ok = db_backup(Path("var/backups"), as_json=False)
"""
