"""The configuration master's dashboard: a Flask app factory.

``create_app(config)`` builds the app with its blueprints: ``auth`` (login,
logout, the login limiter), ``pages`` (nodes, users and their imports and
export, registrations, restart),
``dns`` (SRV weights, the zone, a BIND export), ``calls`` (call detail
records: the calls page, its CSV and ``/api/cdrs``),
``api`` (JSON under ``/api``, HTTP Basic), ``join`` (join tokens, ``/api/join``
with a token only, node removal), ``metrics`` (Prometheus),
``audit`` (every admin action recorded: the audit page, its CSV, ``/api/audit``),
``backups`` (a backup download; ``MASTER_SETTINGS`` names the data folder),
``alarms`` (the alarms page and ``/api/alarms``), ``bans`` (bans in force on
every node, lifting one) and ``sip_settings`` (aliases, digest algorithms,
registrar expiry). Every
page and API call but ``/api/join`` needs an admin; every form carries a CSRF token
(Flask-WTF); the session cookie is HttpOnly and SameSite=Strict.
``app.extensions["pusher"]`` (optional) is poked on every configuration
change, and its bus asks the nodes for state and bindings;
``app.extensions["rates"]`` keeps their counters for the last minute's rates.
"""

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from .rates import Rates

csrf = CSRFProtect()

MAX_UPLOAD = 8 * 1024 * 1024
"""Largest request body (a CSV import) in bytes; a bigger one gets 413."""


def create_app(config: dict, pusher=None) -> Flask:
    """The dashboard app; ``config`` needs ``SECRET_KEY``.

    The caller binds the master store (``store.master.init_master_store``).
    """
    app = Flask(__name__)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=MAX_UPLOAD,
        WTF_CSRF_TIME_LIMIT=None,
        LOGIN_FAILURES=5,
        LOGIN_WINDOW=60.0,
        LAB_DATA="",
    )
    app.config.update(config)
    from .backups import allow_archive_upload

    app.before_request(allow_archive_upload)  # before the CSRF check reads the body
    csrf.init_app(app)
    app.extensions["pusher"] = pusher
    from .user_files import Imports

    app.extensions["user_imports"] = Imports(pusher.poke if pusher is not None else None)
    app.extensions["rates"] = Rates()
    from . import (
        alarms,
        api,
        audit,
        auth,
        backups,
        bans,
        calls,
        dialplan,
        dns,
        join,
        metrics,
        pages,
        ring_groups,
        sip_settings,
    )

    auth.init_app(app)
    audit.init_app(app)
    alarms.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(dns.bp)
    app.register_blueprint(calls.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(backups.bp)
    app.register_blueprint(alarms.bp)
    app.register_blueprint(bans.bp)
    app.register_blueprint(join.bp)
    app.register_blueprint(sip_settings.bp)
    csrf.exempt(bans.api_lift)
    csrf.exempt(audit.api_retention)
    csrf.exempt(join.api_join)
    csrf.exempt(join.api_token)
    csrf.exempt(join.api_remove)
    csrf.exempt(dns.api_set)
    csrf.exempt(api.bp)
    app.register_blueprint(dialplan.bp)
    app.register_blueprint(dialplan.api_bp)
    csrf.exempt(dialplan.api_bp)
    app.register_blueprint(ring_groups.bp)
    app.register_blueprint(ring_groups.api_bp)
    csrf.exempt(ring_groups.api_bp)
    return app
