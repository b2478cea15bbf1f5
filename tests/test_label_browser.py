"""The Label tab in a real browser: mouse and hotkey labelling, undo, the double-click guard,
responses shown as text (never HTML), the remembered name, and a label surviving SIGKILL."""
import re

import pytest

from browser import app_server, browser, page  # noqa: F401  (fixtures)
from core.preferences import PreferenceStore

pytestmark = pytest.mark.browser

EVIL = "<img src=x onerror=alert(1)>"
EVIL_PROMPT = "<b>bold?</b> <img src=y onerror=alert(2)>"
BUTTON = {"left": "#label-a", "right": "#label-b", "tie": "#label-tie", "both_bad": "#label-bad", "skip": "#label-skip"}
HOTKEY = {"left": "1", "right": "2", "tie": "3", "both_bad": "4", "skip": "s"}


def seed(workspace, n):
    """n pairs straight into the store (no model sampling); pair #1 is the hostile one."""
    store = PreferenceStore(workspace / "preferences.db")
    store.add_pairs([(EVIL_PROMPT, EVIL, "a plain answer")] +
                    [(f"prompt {i}", f"first answer {i}", f"second answer {i}") for i in range(1, n)], model="seed")
    store.close()


PAIR_SHOWN = "() => /Pair #\\d+/.test(document.querySelector('#pair-info')?.innerText ?? '')"


def shown_pair(pg):
    m = re.search(r"#(\d+)", pg.inner_text("#pair-info"))
    return int(m.group(1)) if m else None


def wait_for_pair_other_than(pg, old):
    pg.wait_for_function("""old => {
        const m = (document.querySelector('#pair-info')?.innerText ?? '').match(/#(\\d+)/);
        return m !== null && Number(m[1]) !== old; }""", arg=old)
    return shown_pair(pg)


def name_box(pg):
    return pg.locator("#annotator-name input, #annotator-name textarea").first


def open_as(pg, url, name, goto=True):
    if goto:
        pg.goto(url)
    box = name_box(pg)
    box.fill(name)
    box.press("Enter")  # saves the name in the browser; the load handler then shows this annotator's pair
    pg.wait_for_function(PAIR_SHOWN)
    pg.mouse.click(5, 5)  # focus out of the text field, so hotkeys count


def test_label_by_mouse_and_hotkeys(tmp_path, app_server, page):  # noqa: F811
    ws = tmp_path / "ws"
    seed(ws, 14)
    server = app_server(ws, RLHF_QUEUE_TARGET=0)  # no background sampling: only the seeded pairs
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_as(page, server.url, "alice")
    # Plotly (for the PPO and Inspect plots) loads while the page idles on the Label tab, once
    page.wait_for_function("!!window.Plotly", timeout=30_000)
    assert page.evaluate("document.querySelectorAll('script[src*=\"plotly.min.js\"]').length") == 1

    # The hostile pair is first: shown literally in read-only text fields, never as markup.
    assert shown_pair(page) == 1
    assert page.locator("#label-prompt textarea, #label-prompt input").first.input_value() == EVIL_PROMPT
    sides = [page.locator(f"{s} textarea").input_value() for s in ("#label-left", "#label-right")]
    assert sorted(sides) == sorted([EVIL, "a plain answer"])
    side = "#label-left" if sides[0] == EVIL else "#label-right"
    assert page.locator(f"{side} textarea").is_visible()

    done = []  # (pair id, what was pressed)
    for i, choice in enumerate(["left", "right", "tie", "both_bad", "skip"]):
        pid = shown_pair(page)
        if i == 0:
            page.dblclick(BUTTON[choice])  # a fast double click must label once
        else:
            page.click(BUTTON[choice])
        done.append((pid, choice))
        assert wait_for_pair_other_than(page, pid) == pid + 1

    # A digit typed into a text field is text, not a label.
    pid = shown_pair(page)
    name_box(page).press("End")
    name_box(page).press("1")
    page.wait_for_timeout(500)
    assert shown_pair(page) == pid and name_box(page).input_value() == "alice1"
    name_box(page).press("Backspace")
    page.mouse.click(5, 5)

    for choice in ["left", "right", "tie", "both_bad", "skip"]:
        pid = shown_pair(page)
        page.keyboard.press(HOTKEY[choice])
        done.append((pid, choice))
        assert wait_for_pair_other_than(page, pid) == pid + 1

    # Undo (hotkey u) brings the last pair back on screen.
    page.keyboard.press("u")
    assert wait_for_pair_other_than(page, done[-1][0] + 1) == done[-1][0]
    assert "undone" in page.inner_text("#pair-info")
    # Tables redraw shortly after a burst of labels (debounced): the last state must show up.
    page.wait_for_function("() => /your labels\\s*9\\b/.test(document.querySelector('#label-progress')?.innerText ?? '')")

    # The hostile prompt now sits in the recent-labels table: as text there too.
    page.locator("#recent-labels").get_by_text(EVIL_PROMPT).first.wait_for(state="attached")  # may be scrolled out
    assert page.locator("img[src='x'], img[src='y']").count() == 0

    # The name is remembered by the browser across a reload.
    page.reload()
    page.wait_for_function(PAIR_SHOWN)
    assert name_box(page).input_value() == "alice"
    assert shown_pair(page) == done[-1][0]  # the undone pair is the oldest one alice has not labelled

    store = PreferenceStore(ws / "preferences.db")
    rows = store.labels(include_undone=True)
    assert len(rows) == 10, [(r.pair_id, r.choice) for r in rows]
    assert [r.undone for r in rows] == [False] * 9 + [True]
    assert all(r.annotator == "alice" and r.left in ("a", "b") for r in rows)
    for row, (pid, pressed) in zip(rows, done):
        right = "b" if row.left == "a" else "a"
        assert (row.pair_id, row.choice) == (pid, {"left": row.left, "right": right}.get(pressed, pressed))
    assert dialogs == []


def test_label_survives_sigkill(tmp_path, app_server, page):  # noqa: F811
    ws = tmp_path / "ws"
    seed(ws, 3)
    server = app_server(ws, RLHF_QUEUE_TARGET=0)
    page.goto(server.url)
    page.wait_for_function("() => /Enter your name/.test(document.querySelector('#pair-info')?.innerText ?? '')")
    page.click("#label-a")  # no name yet: a warning, no label
    page.get_by_text("enter your name first").first.wait_for()
    open_as(page, server.url, "bob", goto=False)
    pid = shown_pair(page)
    page.click("#label-b")
    wait_for_pair_other_than(page, pid)  # the UI acknowledged: the label was committed before this
    server.kill()  # SIGKILL, no shutdown code

    store = PreferenceStore(ws / "preferences.db")
    rows = store.labels()
    assert [(r.pair_id, r.annotator) for r in rows] == [(pid, "bob")]
    assert rows[0].choice == ("b" if rows[0].left == "a" else "a")  # "B is better": the right-hand response
