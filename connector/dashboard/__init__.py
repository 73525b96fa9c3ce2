"""The dashboard (issue 14): pages under ``/ui/`` and a JSON API under ``/api/v1/``, per portal, served by
``lifecycle run``; what they show is stored by :func:`connector.dashboard.snapshot.record` at the end of each
sync, so no page recomputes features.

Modules: ``schema`` (tables), ``snapshot`` (the writer run after a sync), ``queries`` (reads for pages, API and
CLI), ``auth`` (accounts, sessions, CSRF, throttle), ``web`` (routes), ``i18n`` and ``labels`` (RU/EN).
"""
