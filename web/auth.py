"""Admin login: a session for the pages, HTTP Basic for the API, and a limiter.

Failed logins are counted per client address (pages and API alike); after
``LOGIN_FAILURES`` within ``LOGIN_WINDOW`` seconds the address gets 429
until the window passes, whatever it sends. The limiter's table is bounded.
"""

import functools
import logging
import time

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from store import master as ms

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

MAX_TRACKED = 10_000
"""Client addresses the limiter remembers at most (the oldest are forgotten)."""


class LoginForm(FlaskForm):
    """The login form."""

    username = StringField("Admin", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class Limiter:
    """Failed logins per client address within a sliding window."""

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.failures: dict[str, list[float]] = {}

    def blocked(self, addr: str) -> bool:
        """Whether ``addr`` spent its failures within the window."""
        now = self.clock()
        recent = [t for t in self.failures.get(addr, ()) if now - t < self.window]
        if recent:
            self.failures[addr] = recent
        else:
            self.failures.pop(addr, None)
        return len(recent) >= self.limit

    def fail(self, addr: str) -> None:
        """Count one failure of ``addr``."""
        if addr not in self.failures and len(self.failures) >= MAX_TRACKED:
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(addr, []).append(self.clock())


def init_app(app) -> None:
    """Give ``app`` its login limiter."""
    app.extensions["login_limiter"] = Limiter(
        app.config["LOGIN_FAILURES"], app.config["LOGIN_WINDOW"]
    )


def _limiter() -> Limiter:
    return current_app.extensions["login_limiter"]


def check_login(username: str, password: str) -> bool:
    """Check an admin's credentials through the limiter (429 when it is spent)."""
    addr = request.remote_addr or "?"
    if _limiter().blocked(addr):
        abort(429)
    if ms.check_admin(username, password):
        return True
    _limiter().fail(addr)
    log.warning("failed admin login for %r from %s", username[:64], addr)
    return False


def login_required(view):
    """A page for signed-in admins only (others go to the login page)."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if not session.get("admin"):
            return redirect(url_for("auth.login", next=request.path))
        return view(*args, **kwargs)

    return wrapped


def basic_auth_required(view):
    """An API call for admins by HTTP Basic only: 401 otherwise, never data."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        creds = request.authorization
        if (
            creds is None
            or creds.type != "basic"
            or not check_login(creds.username or "", creds.password or "")
        ):
            return (
                {"error": "admin credentials required (HTTP Basic)"},
                401,
                {"WWW-Authenticate": 'Basic realm="tandem"'},
            )
        return view(*args, **kwargs)

    return wrapped


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in."""
    form = LoginForm()
    if form.validate_on_submit():
        if check_login(form.username.data, form.password.data):
            session.clear()
            session["admin"] = form.username.data
            target = request.args.get("next", "")
            if not target.startswith("/") or target.startswith("//"):
                target = url_for("pages.nodes")
            return redirect(target)
        flash("Wrong admin name or password.")
        return render_template("login.html", form=form), 401
    return render_template("login.html", form=form), (400 if request.method == "POST" else 200)


@bp.route("/logout", methods=["POST"])
def logout():
    """Sign out (a POST with the CSRF token)."""
    session.clear()
    return redirect(url_for("auth.login"))
