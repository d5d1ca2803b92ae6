"""The POST data a browser would submit for a rendered admin page (imported by tests only)."""

from html.parser import HTMLParser


class _FormFields(HTMLParser):
    """The values a browser would submit for each POST form of a page."""

    def __init__(self):
        super().__init__()
        self.forms: list[list[tuple[str, str]]] = []
        self._in_form = False
        self._select: str | None = None
        self._textarea = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and (a.get("method") or "").lower() == "post":
            self._in_form = True
            self.forms.append([])
            return
        if not self._in_form:
            return
        fields = self.forms[-1]
        if tag == "option" and self._select and "selected" in a:
            fields.append((self._select, a.get("value") or ""))
        if "name" not in a:
            return
        if tag == "input":
            kind = (a.get("type") or "text").lower()
            if kind in ("submit", "button", "file", "image"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            fields.append((a["name"], a.get("value") or ("on" if kind == "checkbox" else "")))
        elif tag == "select":
            self._select = a["name"]
        elif tag == "textarea":
            self._textarea = True
            fields.append((a["name"], ""))

    def handle_data(self, data):
        if self._textarea:
            name, value = self.forms[-1][-1]
            self.forms[-1][-1] = (name, value + data)

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = False
        elif tag == "form":
            self._in_form = False


def admin_form_data(page_html: str, **changes) -> dict:
    """The POST data of an admin change form as rendered (the page's largest POST form, with
    inline management forms), with `changes` applied: a value replaces the field; a list sets
    a multi-value field; None removes it."""
    parser = _FormFields()
    parser.feed(page_html)
    data: dict[str, list[str]] = {}
    for name, value in max(parser.forms, key=len, default=[]):
        data.setdefault(name, []).append(value)
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value if isinstance(value, list) else [value]
    return {
        k: v if len(v) > 1 else v[0] for k, v in data.items() if v and k != "csrfmiddlewaretoken"
    }
