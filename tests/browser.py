"""Drive the explorer page in headless chromium, as a user would (tests and benchmarks share it).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and Selenium; the
driver is the system's, never downloaded.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = (
    None
    if CHROMIUM and CHROMEDRIVER
    else "needs chromium and its driver: apt-get install chromium chromium-driver"
)


class Page:
    """The explorer page at ``url`` in a headless chromium."""

    def __init__(self, url: str, width: int = 1400, height: int = 2000, timeout: float = 30.0):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--window-size={width},{height}",
            "--disable-background-networking",
            "--disable-component-update",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.url = url
        self.timeout = timeout
        self.driver.get(url)
        self.wait_for(lambda: self.image("factual-image"), "the first image to show")

    def close(self) -> None:
        self.driver.quit()

    # -- reading the page -----------------------------------------------------------------------
    def wait_for(self, condition, what: str, timeout: float | None = None, poll: float = 0.01):
        """Poll ``condition()`` until it is truthy; its value. Raises ``TimeoutError``."""
        deadline = time.perf_counter() + (timeout or self.timeout)
        while time.perf_counter() < deadline:
            try:
                value = condition()
            except Exception:  # an element being re-rendered
                value = None
            if value:
                return value
            time.sleep(poll)
        raise TimeoutError(f"waited {timeout or self.timeout:.0f} s for {what}")

    def image(self, elem_id: str) -> str | None:
        """The ``src`` of the image shown in component ``elem_id`` (``None`` when empty)."""
        return self.driver.execute_script(
            "const img = document.querySelector(arguments[0]); return img ? img.src : null;",
            f"#{elem_id} img",
        )

    def text(self, elem_id: str) -> str:
        return self.driver.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.innerText : '';", elem_id
        )

    def has_file(self, elem_id: str) -> bool:
        """Whether file component ``elem_id`` holds an uploaded file (its download link shows)."""
        return bool(
            self.driver.execute_script(
                "return document.querySelector(arguments[0]) !== null", f"#{elem_id} a[download]"
            )
        )

    def requested_hosts(self) -> set[str]:
        """Every host the page has fetched a resource from."""
        names = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        return {urlparse(n).hostname for n in [self.url, *names] if n.startswith("http")}

    # -- acting on it -----------------------------------------------------------------------------
    def set_slider(self, elem_id: str, value: float) -> None:
        """Move a slider to ``value`` as a drag does: the range input's value, then its input
        event (a drag fires one per step)."""
        self.driver.execute_script(
            """const range = document.querySelector(arguments[0]);
            range.value = arguments[1];
            range.dispatchEvent(new Event('input', {bubbles: true}));
            range.dispatchEvent(new Event('change', {bubbles: true}));
            range.dispatchEvent(new PointerEvent('pointerup', {bubbles: true}));""",
            f"#{elem_id} input[type=range]",
            value,
        )

    def slider_value(self, elem_id: str) -> float:
        return float(
            self.driver.execute_script(
                "return document.querySelector(arguments[0]).value", f"#{elem_id} input[type=range]"
            )
        )

    def move_and_time(self, elem_id: str, value: float, watched: str) -> float:
        """Seconds from moving slider ``elem_id`` to ``value`` until image ``watched`` changes."""
        before = self.image(watched)
        start = time.perf_counter()
        self.set_slider(elem_id, value)
        self.wait_for(lambda: self.image(watched) not in (None, before), f"{watched} to change")
        return time.perf_counter() - start

    def click(self, elem_id: str) -> None:
        from selenium.webdriver.common.by import By

        element = self.driver.find_element(By.ID, elem_id)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        (
            element if element.tag_name == "button" else element.find_element(By.TAG_NAME, "button")
        ).click()

    def open_tab(self, label: str) -> None:
        from selenium.webdriver.common.by import By

        for button in self.driver.find_elements(By.CSS_SELECTOR, "button[role=tab]"):
            if button.text.strip() == label:
                button.click()
                return
        raise LookupError(f"no tab '{label}'")

    def upload(self, elem_id: str, path: str | Path) -> None:
        from selenium.webdriver.common.by import By

        field = self.driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]")
        field.send_keys(str(Path(path).resolve()))

    def screenshot(self, path: str | Path) -> Path:
        self.driver.save_screenshot(str(path))
        return Path(path)
