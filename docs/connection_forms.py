"""Pictures of the provider's three connection forms, taken from a running Airflow UI in headless Chromium.

    make airflow                      # in another terminal; it prints the address and the login
    .venv/bin/python docs/connection_forms.py http://127.0.0.1:8080 admin <password> docs/images

The same tools as ``tests/test_ui_walk.py``: Debian's ``chromium`` driven by Playwright for Python (the ``test``
extra). One PNG per connection type: the "Add Connection" dialog with its standard fields, and below it the
same dialog with the vendor's extra fields open (the form's sections are an accordion that keeps one open).
"""

from __future__ import annotations

import base64
import shutil
import sys
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FORMS = (
    # connection type as the form lists it (hook-name), example conn id, file name
    ("Upland OL Connect", "olconnect_default", "connection-form-olconnect.png"),
    ("MeadCo ScriptX.Services", "scriptx_default", "connection-form-scriptx.png"),
    ("Bentley iTwin (reality data jobs)", "itwin_default", "connection-form-itwin.png"),
)


def sign_in(page: Page, base_url: str, user: str, password: str) -> None:
    page.goto(f"{base_url}/connections")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Add Connection").wait_for()


def shoot_form(page: Page, base_url: str, type_name: str, conn_id: str, target: Path) -> None:
    page.goto(f"{base_url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=connection_id]").fill(conn_id)
    dialog.locator("input[role=combobox]").fill(type_name)
    page.get_by_role("option", name=type_name).click()
    page.wait_for_timeout(500)
    standard = dialog.screenshot()
    dialog.get_by_role("button", name="Extra Fields", exact=True).click()
    page.wait_for_timeout(1000)
    extra = dialog.screenshot()
    sheet = page.context.new_page()
    images = "".join(
        f'<img style="display:block{";border-top:2px dashed #999" if n else ""}" '
        f'src="data:image/png;base64,{base64.b64encode(shot).decode()}">'
        for n, shot in enumerate((standard, extra))
    )
    sheet.set_content(f'<body style="margin:0"><div id="sheet" style="display:inline-block">{images}</div></body>')
    sheet.locator("#sheet").screenshot(path=str(target))
    sheet.close()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    base_url, user, password, out_dir = argv
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 2400}).new_page()
            sign_in(page, base_url.rstrip("/"), user, password)
            for type_name, conn_id, file_name in FORMS:
                target = Path(out_dir) / file_name
                shoot_form(page, base_url.rstrip("/"), type_name, conn_id, target)
                print(f"{type_name}: {target}")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
