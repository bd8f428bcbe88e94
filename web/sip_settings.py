"""The SIP settings page: domain aliases, digest algorithms, registrar expiry.

Saved settings make a new configuration version that every node applies
without a restart (``store.sip_settings``, ``actors.live_settings``); a bad
value is refused with what is wrong and nothing is stored or pushed.
``GET /api/config`` shows them and ``PUT /api/config`` changes them
(``web.api``).
"""

from flask import Blueprint, flash, redirect, render_template, request, url_for

from sipcore.sip_settings import ALGORITHMS
from store import master as ms
from store.db import StoreError
from store.sip_settings import current_settings, save_settings

from .auth import login_required
from .pages import ActionForm, changed

bp = Blueprint("sip_settings", __name__)


def _form_changes(form) -> dict:
    """The settings a submitted form asks for (numbers left as text are refused)."""
    aliases = [a.strip() for a in form.get("aliases", "")[:4096].replace(",", " ").split()]
    changes: dict = {
        "aliases": aliases,
        "auth_algorithms": [a for a in ALGORITHMS if form.get(f"algorithm-{a}") == "on"],
    }
    order = form.get("preferred", "")
    if order in changes["auth_algorithms"]:
        changes["auth_algorithms"].remove(order)
        changes["auth_algorithms"].insert(0, order)
    for name in ("min_expires", "max_expires", "default_expires"):
        text = form.get(name, "").strip()[:12]
        changes[name] = int(text) if text.isdigit() else text
    return changes


@bp.route("/settings", methods=["GET", "POST"])
@login_required
def page():
    """Show the SIP settings; save a change (a new configuration version)."""
    status = 200
    if request.method == "POST":
        if not ActionForm().validate_on_submit():
            return "CSRF token missing or wrong", 400
        try:
            version = save_settings(_form_changes(request.form))
        except StoreError as e:
            flash(f"Settings not saved: {e}")
            status = 400
        else:
            changed()
            flash(f"Settings saved: configuration {version}.")
            return redirect(url_for("sip_settings.page"))
    return render_template(
        "sip_settings.html",
        settings=current_settings(),
        domain=ms.domain(),
        algorithms=ALGORITHMS,
        action=ActionForm(),
    ), status
