"""The server's web page in a real browser: Debian's Chromium, headless, driven by Selenium, uploads an image
through the page and shows the class ``mobilenetv3 predict`` gives it.

`.ci/run` installs ``chromium`` and ``chromium-driver``; elsewhere the test is skipped without them (on CI it
fails instead). ``MOBILENETV3_SCREENSHOT=docs/serve-page.png`` keeps the screenshot taken after the prediction.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from mobilenetv3 import predict
from mobilenetv3.server import ServerSettings, create_app, load_served_model

from conftest import ON_CI
from serving import live_server, write_images, write_served_model

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None
MISSING = [name for name, found in (("chromium", CHROMIUM), ("chromium-driver", DRIVER), ("selenium", selenium))
           if not found]
pytestmark = pytest.mark.skipif(bool(MISSING) and not ON_CI, reason=f"needs {', '.join(MISSING)}")


@pytest.fixture
def browser():
    assert not MISSING, f"the browser test needs {', '.join(MISSING)} (installed by .ci/run)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=900,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # a given driver: Selenium downloads nothing
    try:
        yield driver
    finally:
        driver.quit()


def test_an_image_uploaded_through_the_page_shows_its_class(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model, image = write_served_model(tmp_path), write_images(tmp_path)[1]
    expected = predict([str(image)], source=str(model))[0].top
    with live_server(create_app(load_served_model(str(model)), ServerSettings())) as url:
        browser.get(url + "/")
        assert "mobilenetv3_small" in browser.find_element(By.ID, "about").text
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-top1"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#results li")
        shown = [row.find_element(By.CLASS_NAME, "class-name").text for row in rows]
        assert shown == [t["class"] for t in expected]
        first = rows[0].find_element(By.CLASS_NAME, "probability").text
        assert first == f"{100 * expected[0]['probability']:.1f}%"
        assert "round trip" in browser.find_element(By.ID, "latency").text
        screenshot = Path(os.environ.get("MOBILENETV3_SCREENSHOT") or tmp_path / "page.png")
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 1000


def test_several_images_at_once_each_show_their_class_with_the_model_chosen(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from mobilenetv3.server.repository import ModelRepository

    from builders import write_weights
    from serving import PREPROCESSING

    repo, images = tmp_path / "models", write_images(tmp_path)[:3]
    write_weights(repo / "digits.pt", preprocessing=PREPROCESSING, responsive=True)
    write_weights(repo / "fashion" / "2" / "model.pt", bias=[0.0, 3.0, 0.0], preprocessing=PREPROCESSING)
    expected = [r.top[0]["class"] for r in predict([str(i) for i in images], source=str(repo / "digits.pt"))]
    repository = ModelRepository([str(repo)], lambda path, name: load_served_model(str(path), name=name))
    repository.preload()

    def shown_after(upload) -> list:
        browser.execute_script("delete document.body.dataset.tops")
        upload()
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-tops"))
        return json.loads(browser.find_element(By.TAG_NAME, "body").get_attribute("data-tops"))

    with live_server(create_app(repository, ServerSettings())) as url:
        browser.get(url + "/")
        picker = Select(browser.find_element(By.ID, "model"))
        assert [o.text for o in picker.options] == ["digits (version 1)", "fashion (version 2)"]
        picker.select_by_value("digits")
        upload = browser.find_element(By.ID, "file")
        assert shown_after(lambda: upload.send_keys("\n".join(str(i) for i in images))) == expected
        assert len(browser.find_elements(By.CSS_SELECTOR, "#results .result")) == 3
        names = [e.text for e in browser.find_elements(By.CLASS_NAME, "file-name")]
        assert names == [i.name for i in images]
        assert "3 images" in browser.find_element(By.ID, "latency").text
        picker.select_by_value("fashion")
        assert "fashion" in browser.find_element(By.ID, "about").text
        browser.execute_script("arguments[0].value = ''", upload)  # a multiple input adds what it is sent
        assert shown_after(lambda: upload.send_keys(str(images[0]))) == ["c1"]
