"""`tuneforge ui` in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, installed by
`make browser`) driven by Selenium against the app served in a thread over a few tiny-model runs.

TUNEFORGE_UI_SCREENSHOTS=1 also saves one screenshot per page to docs/img/ui-*.png (docs/ui.md shows them).
A failing browser test leaves failure.png in its tmp dir.
"""

import contextlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import NoCapture, run_cli, write_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
SCREENSHOTS = os.environ.get("TUNEFORGE_UI_SCREENSHOTS") == "1"


# ---- runs: two tiny SFT runs, plus result files of a calibration and an agent run ----------------

def _calibration_run(run: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": "calibration", "method": "lora", "output_dir": str(run)}))
    methods = {"zero-shot classifier": (0.31, 0.030, 0.54, 0.228), "probe": (0.31, 0.083, 0.57, 0.230),
               "calibration-tuned + temperature": (0.31, 0.044, 0.61, 0.210)}
    results = {split: {m: {"n": 240, "accuracy": a, "ece": e, "auroc": u, "brier": b, "mean_confidence": 0.4}
                       for m, (a, e, u, b) in methods.items()} for split in ("test", "shift")}
    (run / "calibration_results.json").write_text(json.dumps({"results": results, "temperature": 0.63,
                                                              "train": {"seconds": 42.0, "best_val_loss": 0.64}}))
    (run / "plots").mkdir()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.bar([0.1, 0.3, 0.5, 0.7, 0.9], [0.12, 0.28, 0.45, 0.75, 0.85], width=0.18)
    ax.set_title("reliability (test)")
    fig.savefig(run / "plots" / "reliability-test-calibration-tuned--temperature.png", dpi=60)
    plt.close(fig)


def _agent_run(run: Path) -> None:
    (run / "traces").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": "agent", "method": "lora", "output_dir": str(run)}))
    (run / "agent.json").write_text(json.dumps({"method": "lora", "roles": {}}))
    metrics = lambda s, h: {"episodes": 2, "success_rate": s, "plan_accuracy": 0.5, "hallucination_rate": h}  # noqa: E731
    (run / "agent_results.json").write_text(json.dumps(
        {"/data/test_id.json": {"single model": metrics(0.5, 0.25), "three roles": metrics(1.0, 0.0)}}))
    episode = {"episode": 0, "instruction": "What is 2 plus 2?", "tools": ["add", "multiply"], "final_answer": "4",
               "gave_up": False, "cut_off": False, "steps": 3, "hallucinated_calls": 1, "trace": [
                   {"turn": 0, "role": "planner", "reply": "...", "thought": "I should add the numbers.", "decision": "call"},
                   {"turn": 0, "role": "caller", "reply": "...", "call": {"name": "sum_all", "arguments": {"a": 2, "b": 2}},
                    "observation": "{\"error\": \"unknown tool sum_all\"}"},
                   {"turn": 1, "role": "planner", "reply": "...", "thought": "Use the add tool.", "decision": "call"},
                   {"turn": 1, "role": "caller", "reply": "...", "call": {"name": "add", "arguments": {"a": 2, "b": 2}},
                    "observation": "{\"result\": 4}"},
                   {"turn": 2, "role": "planner", "reply": "...", "thought": "I have the answer.", "decision": "finish"},
                   {"turn": 2, "role": "summarizer", "reply": "4"}]}
    (run / "traces" / "test_id-three-roles.jsonl").write_text(json.dumps(episode) + "\n")


@pytest.fixture(scope="module")
def ui(tiny_llama, dates_data, tmp_path_factory):
    from tuneforge.serve.background import serve_in_thread
    from tuneforge.ui.app import create_ui_app

    root = tmp_path_factory.mktemp("ui")
    runs = root / "runs"
    train, val = dates_data
    for name, lr, steps in (("sft-a", 1e-3, 4), ("sft-b", 3e-3, 3)):
        cfg = write_config(root / f"{name}.yaml", tiny_llama, train, runs / name, val=val,
                           train={"max_steps": steps, "lr": lr, "eval_every": 2})
        code, _, _ = run_cli(["train", cfg], NoCapture())
        assert code == 0, f"training {name} failed"
    _calibration_run(runs / "calibration-demo")
    _agent_run(runs / "agent-demo")
    examples = root / "examples"
    examples.mkdir()
    tiny = yaml.safe_load(write_config(root / "tiny.yaml", tiny_llama, train, runs / "unused", val=val,
                                       train={"max_steps": 3}).read_text())
    (examples / "tiny.yaml").write_text("# a tiny run for the launch form\n" + yaml.safe_dump(tiny, sort_keys=False))
    app = create_ui_app(runs, serve_dir=root / "serve", examples_dir=examples)
    with serve_in_thread(app) as url:
        yield SimpleNamespace(url=url, runs=runs, serve_dir=root / "serve")


@pytest.fixture(scope="module")
def browser():
    reason = None
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        reason = f"{CHROMIUM} / {CHROMEDRIVER} not installed (`make browser`: apt-get install chromium chromium-driver)"
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        reason = "selenium is not installed (pip install -r requirements.lock)"
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@contextlib.contextmanager
def screenshot_on_failure(driver, tmp_path: Path):
    try:
        yield
    except BaseException:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
        raise


def docs_shot(driver, name: str) -> None:
    if SCREENSHOTS:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return Math.min(document.body.scrollHeight + 20, 2400)")
        driver.set_window_size(1400, max(700, height))
        driver.save_screenshot(str(DOCS_IMG / f"ui-{name}.png"))
        driver.set_window_size(1400, 1000)


def read_page(driver, read, accept=lambda value: True, timeout: float = 30):
    """read(driver) once it does not raise and accept(value) holds, retried inside a wait: the runs
    table re-renders every 2 s and a streaming run re-renders its page, so an element found a moment
    earlier can be stale by the time it is read."""
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(d):
        value = read(d)
        return (value,) if accept(value) else False

    return WebDriverWait(driver, timeout, ignored_exceptions=(Exception,)).until(attempt)[0]


def wait_for(driver, css: str, timeout: float = 30, check=None):
    """The elements matching css (those passing check), once there is at least one."""
    from selenium.webdriver.common.by import By

    def found(d):
        return [e for e in d.find_elements(By.CSS_SELECTOR, css) if check is None or check(e)]

    return read_page(driver, found, accept=bool, timeout=timeout)


def text_of(css: str):
    from selenium.webdriver.common.by import By
    return lambda d: d.find_element(By.CSS_SELECTOR, css).text


def row_names(d) -> list[str]:
    from selenium.webdriver.common.by import By
    return [r.get_attribute("data-name") for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")]


def open_page(driver, ui, hash_: str) -> None:
    driver.get("about:blank")  # a fresh page: a URL differing only in its #fragment would keep the old one
    driver.get(f"{ui.url}/#{hash_}")


# ---- browser tests ---------------------------------------------------------------------------

def test_runs_list_sort_filter(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    with screenshot_on_failure(browser, tmp_path):
        open_page(browser, ui, "runs")
        rows = wait_for(browser, "#runs-table tbody tr", check=lambda e: e.get_attribute("data-name") == "sft-b")
        names = read_page(browser, row_names)
        assert {"sft-a", "sft-b", "calibration-demo", "agent-demo"} <= set(names)
        status = read_page(browser, lambda d: {r.get_attribute("data-name"): r.find_element(By.CSS_SELECTOR, "td.status").text
                                               for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")})
        assert status["sft-a"] == status["sft-b"] == "finished"
        docs_shot(browser, "runs")
        browser.find_element(By.CSS_SELECTOR, 'th[data-key="name"]').click()  # sort by name, ascending
        wait_for(browser, 'th[data-key="name"]', check=lambda e: "▲" in e.text)
        names = read_page(browser, row_names)
        assert names == sorted(names)
        browser.find_element(By.ID, "runs-filter").send_keys("sft-b")
        wait_for(browser, "#runs-table tbody tr", check=lambda e: len(
            browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")) == 1)
        assert rows and read_page(browser, row_names) == ["sft-b"]


def test_run_page_draws_curves(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    with screenshot_on_failure(browser, tmp_path):
        open_page(browser, ui, "run/sft-a")
        path = wait_for(browser, 'svg.chart path.series[data-name="train loss"]')[0]
        assert int(path.get_attribute("data-points")) == 4
        assert path.get_attribute("d").count("L") == 3  # M + 3 line segments: one point per step
        assert wait_for(browser, 'svg.chart path.series[data-name="val loss"]')
        assert wait_for(browser, 'svg.chart path.series[data-name="lr"]')
        page = browser.find_element(By.ID, "main").text
        assert "Before / after" in page and "max_steps: 4" in page
        docs_shot(browser, "run")


def test_calibration_and_agent_pages(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    with screenshot_on_failure(browser, tmp_path):
        open_page(browser, ui, "run/calibration-demo")
        best = wait_for(browser, "td.best")
        assert any(c.text.startswith("0.03") for c in best)  # lowest test ECE is marked
        img = wait_for(browser, "img.plot", check=lambda e: browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", e) > 0)[0]
        assert "reliability" in img.get_attribute("src")
        docs_shot(browser, "calibration")

        open_page(browser, ui, "run/agent-demo")
        wait_for(browser, "#trace details")
        browser.find_element(By.CSS_SELECTOR, "#trace summary").click()
        bad = wait_for(browser, ".step.halluc", check=lambda e: e.is_displayed())
        assert len(bad) == 1 and "sum_all" in bad[0].text
        assert "three roles" in browser.find_element(By.ID, "main").text
        docs_shot(browser, "agent")


def test_compare_two_runs(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    with screenshot_on_failure(browser, tmp_path):
        open_page(browser, ui, "compare/sft-a,sft-b")
        assert wait_for(browser, "#compare-table td.best")
        curves = browser.find_elements(By.CSS_SELECTOR, "#cmp-curves svg.chart")[0]
        assert len(curves.find_elements(By.CSS_SELECTOR, "path.series")) == 2
        head = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#compare-table th")]
        assert head[1:] == ["sft-a", "sft-b"]
        docs_shot(browser, "compare")


def test_chat_streams_and_stores_feedback(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from tuneforge.serve.store import FeedbackStore

    with screenshot_on_failure(browser, tmp_path):
        open_page(browser, ui, "chat/sft-a")
        box = wait_for(browser, "#chat-input")[0]
        box.send_keys("Rewrite this date in ISO format: july 4 2020")
        browser.find_element(By.ID, "chat-send").click()
        reply = wait_for(browser, ".msg.assistant.done", timeout=120)[0]
        assert reply.get_attribute("data-id").startswith("chatcmpl-")
        reply.find_element(By.CSS_SELECTOR, "button.up").click()
        wait_for(browser, ".msg.assistant .fb", check=lambda e: e.text == "saved")
        reply.find_element(By.CSS_SELECTOR, "input.prefer").send_keys("2020-07-04")
        reply.find_element(By.CSS_SELECTOR, "button.prefer-save").click()
        time.sleep(0.5)
        docs_shot(browser, "chat")
    counts = FeedbackStore(ui.serve_dir).counts()
    assert counts["completions"] >= 1 and counts["feedback"] == 2
    # The answer arrives as server-sent events: pieces, then one "done" event carrying the completion id.
    req = urllib.request.Request(f"{ui.url}/api/chat", method="POST", headers={
        "X-Tuneforge-UI": "1", "Content-Type": "application/json"},
        data=json.dumps({"run": "sft-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode())
    events = [json.loads(line[6:]) for line in urllib.request.urlopen(req, timeout=120).read().decode().splitlines()
              if line.startswith("data: ")]
    assert events[-1]["done"] and events[-1]["id"].startswith("chatcmpl-") and len(events) >= 2


def test_launch_validates_and_trains(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    with screenshot_on_failure(browser, tmp_path):
        open_page(browser, ui, "launch")
        text = wait_for(browser, "#launch-yaml", check=lambda e: "max_steps" in e.get_attribute("value"))[0]
        wait_for(browser, "#launch-errors li.ok")  # the example is valid
        good = text.get_attribute("value")
        browser.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
                               text, good.replace("lr: 0.001", "lr: fast"))
        # the check reads the text inside the wait: the list re-renders on each validation
        wait_for(browser, '#launch-errors li[data-key="train.lr"]', check=lambda e: "train.lr" in e.text)
        browser.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
                               text, good)
        wait_for(browser, "#launch-errors li.ok")
        name = browser.find_element(By.ID, "launch-name")
        name.clear()
        name.send_keys("launched")
        docs_shot(browser, "launch")
        browser.find_element(By.ID, "launch-start").click()
        wait_for(browser, "#run-status")
        status = read_page(browser, text_of("#run-status"), lambda t: t in ("finished", "failed", "interrupted"),
                           timeout=300)
        log = read_page(browser, text_of("#main"))
        assert status == "finished", log[-2000:]
        assert (ui.runs / "launched" / "report.json").is_file()
        open_page(browser, ui, "runs")
        # The table re-renders every 2 s, so a row found once can go stale: wait on the cell itself.
        wait_for(browser, '#runs-table tr[data-name="launched"] td.status', check=lambda e: e.text == "finished")


# ---- no browser needed -----------------------------------------------------------------------

def test_api_key_and_request_guards(tmp_path):
    from tuneforge.errors import UserError
    from tuneforge.serve.background import serve_in_thread
    from tuneforge.ui.app import create_ui_app, run_ui

    with pytest.raises(UserError, match="API key"):
        run_ui(tmp_path / "runs", host="0.0.0.0", api_key=None)

    def call(url, path, body=None, headers=None):
        req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.headers

    with serve_in_thread(create_ui_app(tmp_path / "runs", api_key="sekrit")) as url:
        assert call(url, "/")[0] == 200  # the page itself holds no data
        assert call(url, "/api/runs")[0] == 401
        assert call(url, "/api/runs", headers={"Authorization": "Bearer nope"})[0] == 401
        assert call(url, "/api/runs", headers={"Authorization": "Bearer sekrit"})[0] == 200
        ui_header = {"X-Tuneforge-UI": "1"}
        assert call(url, "/api/login", {"key": "nope"}, ui_header)[0] == 401
        status, headers = call(url, "/api/login", {"key": "sekrit"}, ui_header)
        assert status == 200 and "tuneforge_ui_key=sekrit" in headers["set-cookie"]
        assert call(url, "/api/runs", headers={"Cookie": "tuneforge_ui_key=sekrit"})[0] == 200
        # POSTs need the page's header: a cross-site form cannot send it.
        assert call(url, "/api/validate", {"yaml": "{}"}, {"Authorization": "Bearer sekrit"})[0] == 403
    with serve_in_thread(create_ui_app(tmp_path / "runs")) as url:
        assert call(url, "/api/runs")[0] == 200
        assert call(url, "/api/runs", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
        assert call(url, "/api/runs/../../etc")[0] == 404


def test_status_rules(tmp_path):
    from tuneforge.ui.runs import run_status

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert run_status(run) == "running"
    later = time.time() + 3600
    assert run_status(run, now=later) == "failed"
    (run / "checkpoints" / "step-0000001").mkdir(parents=True)
    (run / "checkpoints" / "step-0000001" / "progress.json").write_text("{}")
    assert run_status(run, now=later) == "interrupted"
    (run / "report.json").write_text("{}")
    assert run_status(run, now=later) == "finished"
    shutil.rmtree(run)


def test_the_stop_button_checkpoints_the_step_and_says_how_to_resume(tiny_llama, dates_data, tmp_path):
    # What POST /api/launch/NAME/stop does: SIGTERM to the training it launched, which finishes its step,
    # checkpoints and exits 143 (the graceful stop of `tuneforge train`); the run page then offers --resume.
    from tuneforge.ui.launcher import Launcher

    runs = tmp_path / "runs"
    cfg = yaml.safe_load(write_config(tmp_path / "c.yaml", tiny_llama, dates_data[0], runs / "long",
                                      eval={"before_after": False},
                                      train={"max_steps": 500, "batch_tokens": 256, "save_every": 1000,
                                             "compile": "false"}).read_text())
    launcher = Launcher(runs)
    launcher.start("long", yaml.safe_dump(cfg))
    metrics = runs / "long" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while launcher.alive("long") and time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.05)
    assert launcher.alive("long"), launcher.info("long")["log_tail"]
    assert launcher.stop("long") == {"name": "long", "stopped": True}
    info = launcher.info("long")
    assert info["returncode"] == 143 and info["stopped"] and info["resume_command"].endswith("--resume")
    assert "continue with: tuneforge train" in info["log_tail"]
    [checkpoint] = (runs / "long" / "checkpoints").glob("step-*")
    assert (checkpoint / "progress.json").is_file()  # complete: the step it stopped at
