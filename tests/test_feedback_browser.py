"""The labeling app in a real Chromium (Debian's, through Playwright): a labeler logs in, writes a
demonstration, evaluates and ranks K outputs with a tie by keyboard and again by drag and drop,
escapes an item as not rankable, compares two outputs; model output with <script> shows as text;
an admin exports from the project page and the export trains `instructkit rm` for one step.
Screenshots go to test-artifacts/."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the labeling app needs its extra: pip install 'instructkit[app]'")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'instructkit[app]')")

from browser import chromium_browser, screenshot  # noqa: E402,F401  (the fixture is used by name)
from sqlalchemy import select  # noqa: E402

from instructkit import data as datalib  # noqa: E402
from instructkit.feedback import db as D  # noqa: E402
from instructkit.feedback import security as S  # noqa: E402
from instructkit.feedback import service as svc  # noqa: E402
from instructkit.feedback.app import ServerThread, create_app  # noqa: E402

PASSWORD = "correct horse battery"
XSS = '<script>document.title = "pwned"; alert(1)</script>'
K4 = ["The capital of France is Paris.", XSS, "Paris.", "France's capital city is Paris, on the Seine."]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelweb")
    app = create_app(f"sqlite:///{root / 'labels.db'}")
    with app.state.sessions() as db:
        S.create_user(db, "root", PASSWORD, "admin")
        S.create_user(db, "ann", PASSWORD, "labeler")
        p = svc.create_project(db, "web", overlap=1, k_min=2, k_max=4,
                               instructions="Prefer helpful, honest and harmless answers.")
        svc.import_prompts(db, p, [({"prompt": "Write a two-line poem about rain."}, "web", 1)])
        svc.make_tasks(db, p, "demonstration")  # before the other prompts exist: one demonstration task
        svc.import_outputs(db, p, [
            ({"prompt": "What is the capital of France?", "completions": K4}, "web", 1),
            ({"prompt": "Name a prime number.", "completions": ["7", "9", "Two.", "A prime: 13"]}, "web", 2),
            ({"prompt": "asdf qwer", "completions": ["?", "??"]}, "web", 3),
            ({"prompt": "Say hello.", "completion": "hello", "model": "base"}, "web", 4),
            ({"prompt": "Say hello.", "completion": "Hello! How can I help you today?", "model": "sft"}, "web", 5)])
        svc.make_tasks(db, p, "comparison", ["sft", "base"])
        db.commit()
        pid = p.id
    with ServerThread(app) as url:
        yield {"url": url, "app": app, "pid": pid, "root": root}
    app.state.engine.dispose()


@pytest.fixture(scope="module")
def labeler(chromium_browser, site):
    """One logged-in labeler (ann) for the module's labeler tests."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(site["url"] + "/")
    assert page.url.startswith(site["url"] + "/login")
    page.fill("#username", "ann")
    page.fill("#password", PASSWORD)
    screenshot(page, "label-01-login")
    page.click("#login")
    page.wait_for_url(site["url"] + "/queue")
    yield page
    context.close()


def _labels(site, kind: str) -> list[dict]:
    with site["app"].state.sessions() as db:
        rows = db.execute(select(D.Label, D.Task).join(D.Task, D.Task.id == D.Label.task_id)
                          .where(D.Task.kind == kind).order_by(D.Label.id)).all()
        return [{"payload": label.payload, "outputs": task.output_ids, "task": task.id} for label, task in rows]


def _output_texts(site, ids: list[int]) -> list[str]:
    with site["app"].state.sessions() as db:
        return [db.get(D.Output, i).text for i in ids]


def test_queue_shows_progress_and_a_demonstration_is_written(site, labeler):
    page = labeler
    assert page.locator("#who").inner_text().startswith("ann")
    assert page.locator("table.queue tbody tr").count() == 3  # demonstrations, rankings, comparisons
    screenshot(page, "label-02-queue")
    page.click("a.start[href$='kind=demonstration']")
    page.wait_for_url("**/task/*")
    assert page.locator("#prompt-text").inner_text() == "Write a two-line poem about rain."
    page.locator("#completion").fill("Rain taps the window,\nthe garden drinks.")
    screenshot(page, "label-03-demonstration")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/queue?msg=*")  # the only demonstration: back to the queue
    (label,) = _labels(site, "demonstration")
    assert label["payload"] == {"completion": "Rain taps the window,\nthe garden drinks."}


def test_rank_k_outputs_with_a_tie_by_keyboard(site, labeler):
    page = labeler
    page.goto(f"{site['url']}/projects/{site['pid']}/next?kind=ranking")
    page.wait_for_url("**/task/*")
    texts = [page.locator(f"#output-{i} pre").inner_text() for i in range(4)]
    assert sorted(texts) == sorted(K4)  # shown in a shuffled order
    # the <script> output is shown as its text, and nothing ran
    assert XSS in texts and page.title() != "pwned" and page.dialogs == []
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    assert "Likert score" in page.locator("#help-table").inner_text()
    screenshot(page, "label-04-shortcuts")
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()

    # evaluate: j/k choose an output, 1-7 score it, letters toggle Table 3 flags
    for i, (score, flags) in enumerate([("7", ""), ("2", "hf"), ("6", ""), ("4", "c")]):
        if i:
            page.keyboard.press("j")
        page.keyboard.press(score)
        for f in flags:
            page.keyboard.press(f)
    assert page.locator("#output-1 input[data-flag=hallucination]").is_checked()
    assert page.locator("#output-1 input[data-flag=fails_instruction]").is_checked()
    assert page.locator("#output-3 input[data-flag=constraint_satisfied]").is_checked()
    assert page.locator("#output-2 input[name=likert_2][value='6']").is_checked()

    # rank: r, then j j (choose C), 1 (to rank 1), j j j (choose D), Shift+Up x3 (through "tied with B",
    # "between A and B", to "tied with A")
    page.keyboard.press("r")
    for key in ["j", "j", "1", "j", "j", "j", "Shift+ArrowUp", "Shift+ArrowUp", "Shift+ArrowUp"]:
        page.keyboard.press(key)
    assert [page.locator(f"#rank-{i}").input_value() for i in range(4)] == ["2", "3", "1", "2"]
    assert page.locator("#tier-1.tied .card").count() == 2
    screenshot(page, "label-05-ranked-by-keyboard")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/task/*?msg=Submitted.")  # straight on to the next ranking task
    label = _labels(site, "ranking")[0]
    assert label["payload"]["ranks"] == [2, 3, 1, 2] and label["payload"]["likert"] == [7, 2, 6, 4]
    assert label["payload"]["flags"][1]["hallucination"] and label["payload"]["flags"][1]["fails_instruction"]
    assert label["payload"]["flags"][3]["constraint_satisfied"] and not label["payload"]["flags"][0]["sexual"]
    assert _output_texts(site, label["outputs"]) == texts


def test_rank_k_outputs_with_a_tie_by_drag_and_drop(site, labeler):
    page = labeler  # on the second ranking task already
    assert page.locator("#prompt-text").inner_text() == "Name a prime number."
    page.click("#submit")  # no Likert scores yet: refused in the page, with the reason
    assert "a 1-7 score first" in page.locator("#client-error").inner_text()
    for i, score in enumerate([6, 1, 3, 5]):
        page.locator(f"#output-{i} input[name=likert_{i}][value='{score}']").check()
    page.drag_and_drop("#card-3", "#tier-0")   # D onto A's rank: a tie
    page.drag_and_drop("#card-2", "#gap-0")    # C above everything
    assert [page.locator(f"#rank-{i}").input_value() for i in range(4)] == ["2", "3", "1", "2"]
    screenshot(page, "label-06-ranked-by-drag-and-drop")
    page.click("#submit")
    page.wait_for_url("**/task/*?msg=Submitted.")
    label = _labels(site, "ranking")[1]
    assert label["payload"]["ranks"] == [2, 3, 1, 2] and label["payload"]["likert"] == [6, 1, 3, 5]


def test_not_rankable_escape(site, labeler):
    page = labeler  # the third ranking task: gibberish
    assert page.locator("#prompt-text").inner_text() == "asdf qwer"
    page.keyboard.press("n")
    assert page.locator("#not-rankable-banner").is_visible()
    screenshot(page, "label-07-not-rankable")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/queue?msg=*")
    label = _labels(site, "ranking")[2]
    assert label["payload"]["not_rankable"] is True and label["payload"]["ranks"] == [1, 1]


def test_side_by_side_comparison_by_keyboard(site, labeler):
    page = labeler
    page.goto(f"{site['url']}/projects/{site['pid']}/next?kind=comparison")
    page.wait_for_url("**/task/*")
    left = page.locator("#output-0 pre").inner_text()
    page.keyboard.press("a" if left.startswith("Hello!") else "b")
    screenshot(page, "label-08-comparison")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/queue?msg=*")
    assert "3 / 3" in page.locator("table.queue").inner_text()  # the queue's progress: all rankings done
    (label,) = _labels(site, "comparison")
    winner = _output_texts(site, label["outputs"])[0 if label["payload"]["choice"] == "A" else 1]
    assert winner.startswith("Hello!")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    pytest.importorskip("torch")
    from instructkit.config import ModelInit
    from instructkit.models import new_model, save_model, train_tokenizer

    out = tmp_path_factory.mktemp("lm") / "lm"
    texts = K4 + ["7", "9", "Two.", "A prime: 13", "What is the capital of France?", "Name a prime number."]
    tok = train_tokenizer(texts * 5, vocab_size=300)
    save_model(new_model(ModelInit(family="gpt2", d_model=16, n_layers=1, n_heads=2, max_len=96), tok, seed=0), tok, out)
    return out


def test_admin_exports_and_the_export_trains_the_reward_model(site, chromium_browser, tiny_lm, tmp_path):
    from instructkit.cli import main as cli_main

    context = chromium_browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(site["url"] + "/login")
    page.fill("#username", "root")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(site["url"] + "/admin")
    page.click(f"a[href='/admin/projects/{site['pid']}']")
    assert "3 prompts" not in page.locator("main").inner_text()  # 5 prompts: the page's counts are live
    screenshot(page, "label-09-admin-project")
    files = {}
    for kind in ("rankings", "demonstrations"):
        with page.expect_download() as info:
            page.click(f"#export-{kind}")
        files[kind] = tmp_path / f"{kind}.jsonl"
        info.value.save_as(files[kind])
    page.goto(f"{site['url']}/admin/projects/{site['pid']}/quality")
    screenshot(page, "label-10-quality")
    context.close()

    rankings = datalib.load(files["rankings"], "ranking")
    assert [r.ranks for r in rankings] == [[2, 3, 1, 2], [2, 3, 1, 2], [1, 1]]
    assert all(r.labeler == "ann" for r in rankings) and rankings[2].not_rankable
    demos = datalib.load(files["demonstrations"], "demonstration")
    assert demos[0].completion.startswith("Rain taps")

    out = tmp_path / "rm"
    code = cli_main(["rm", f"model={tiny_lm}", f"data.train={files['rankings']}", "data.val_fraction=0",
                     f"normalize.data={files['demonstrations']}", "batch_size=64", "log_every=1", f"out={out}"])
    assert code == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 1  # one optimiser step over the whole export
    assert (out / "config.json").is_file()
