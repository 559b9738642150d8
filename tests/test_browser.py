"""The pages that matter, in a real Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from core.models import User
from projects.models import Project
from tests.conftest import ROOT, require
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("YMIR_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
SHOTS = ROOT / "test-results"


@pytest.fixture
def page(live_server, monkeypatch) -> Iterator:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        require("YMIR_REQUIRE_BROWSER", f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls in the test are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-US")
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        yield tab
        context.close()
        browser.close()


def test_first_user_registers_sees_home_creates_a_project_and_reads_chinese(page, live_server):
    SHOTS.mkdir(exist_ok=True)
    page.goto(live_server.url + "/")
    assert "/accounts/login/" in page.url
    assert page.get_by_text("the first account becomes the super admin").is_visible()
    page.get_by_role("link", name="Create an account").click()
    # hx-boost swaps the page in place: wait for the new page before filling (login has the same labels)
    page.get_by_role("heading", name="Create an account").wait_for()
    page.get_by_label("Username").fill("lego_admin")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    page.get_by_role("heading", name="Welcome, lego_admin").wait_for()
    assert page.locator(".usermenu .badge").inner_text() == "Super admin"
    assert page.locator(".calendar .cal-day").count() == 26 * 7
    page.screenshot(path=str(SHOTS / "home.png"), full_page=True)

    page.get_by_role("link", name="New project").click()
    page.get_by_role("heading", name="New project").wait_for()
    page.get_by_label("Name").fill("Lego bricks")
    page.get_by_role("button", name="Create project").click()
    page.get_by_role("heading", name="Lego bricks").wait_for()
    assert Project.objects.filter(name="Lego bricks", owner__username="lego_admin").exists()

    page.get_by_role("link", name="Users").click()
    page.get_by_role("heading", name="Users").wait_for()
    page.screenshot(path=str(SHOTS / "users.png"), full_page=True)

    page.select_option("select[name=language]", "zh-hans")
    page.get_by_role("link", name="首页").wait_for()
    page.get_by_role("link", name="首页").click()
    page.get_by_role("heading", name="我的项目").wait_for()
    page.screenshot(path=str(SHOTS / "home-zh.png"), full_page=True)
    assert User.objects.get(username="lego_admin").role == User.Role.SUPER_ADMIN


@pytest.mark.worker
def test_import_a_dataset_watch_its_progress_and_browse_it(page, live_server, worker, trainer, tmp_path):
    from datasets.demo import write_voc_zip
    from tests.factories import ProjectFactory

    SHOTS.mkdir(exist_ok=True)
    project = ProjectFactory(owner=trainer, name="Lego")
    archive = write_voc_zip(tmp_path / "lego.zip", count=6, seed=11, width=320, height=240)
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill(trainer.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name=f"Welcome, {trainer.username}").wait_for()
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.get_by_role("link", name="Import a dataset").click()
    page.get_by_label("Name").fill("lego train")
    page.get_by_label("Zip file").set_input_files(str(archive))
    page.select_option("select[name=unknown_classes]", "add")
    page.get_by_role("button", name="Start import").click()
    page.get_by_role("heading", name="lego train").wait_for()
    # the state card polls until the worker has finished; then the images appear
    page.locator("#dataset-state .state-ready").wait_for(timeout=90_000)
    page.reload()
    assert page.locator("figure.asset").count() == 6
    assert page.locator("figure.asset rect.gt").count() > 6
    page.screenshot(path=str(SHOTS / "dataset.png"), full_page=True)
    page.get_by_role("link", name="Analysis").click()
    page.get_by_role("heading", name="Dataset analysis").wait_for()
    page.wait_for_selector("canvas[data-drawn='1']")
    assert page.locator("canvas[data-drawn='1']").count() >= 6
    page.screenshot(path=str(SHOTS / "analysis.png"), full_page=True)
    page.go_back()
    page.get_by_role("link", name="Classes").click()
    page.get_by_role("heading", name="Classes", exact=True).wait_for()
    assert page.locator("tbody tr").count() >= 5


def test_an_admin_runs_the_conformance_check_and_watches_the_report(page, live_server, worker, admin_user):
    """Through a real worker: the check's steps, the sample imports and the three runs, live on the page."""
    from tests.executors_util import contract_executor

    SHOTS.mkdir(exist_ok=True)
    image = contract_executor("local", admin_user)
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name=f"Welcome, {admin_user.username}").wait_for()
    page.goto(f"{live_server.url}/manage/executors/{image.pk}/")
    page.get_by_role("button", name="Run the conformance check").click()
    page.get_by_text("Conformance check started.").wait_for()
    # the section polls while the check runs; the report appears without a reload
    page.get_by_text("Some points are not honoured.").wait_for(timeout=120_000)
    assert page.locator("#conformance tr").count() > 10
    page.screenshot(path=str(SHOTS / "executor-conformance.png"), full_page=True)
    image.refresh_from_db()
    assert image.conformance["state"] == "done" and image.conformance["passed"] is False

    training = image.tasks.filter(kind="training").get()
    page.goto(f"{live_server.url}/tasks/{training.pk}/")
    page.get_by_role("heading", name="Outputs").wait_for()
    page.get_by_role("link", name=f"conformance-{image.name} v1").click()
    page.get_by_role("heading", name="Stages").wait_for()
    assert page.get_by_text("recommended").is_visible()
    page.screenshot(path=str(SHOTS / "model-page.png"), full_page=True)


def _login(page, live_server, user) -> None:
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name=f"Welcome, {user.username}").wait_for()


def test_train_from_the_project_page_see_the_platform_map_and_diagnose(page, live_server, worker, trainer):
    """The default detector through a real worker: the training form, the live task, the model page with the
    platform's mAP per stage and the training curves, then a diagnosis comparing two stages."""
    from django.db.models import Count

    from datasets.models import DatasetVersion
    from datasets.services import demo_classes_ensure, demo_import_start
    from models_app.executors import detector_register
    from models_app.models import Evaluation
    from tests.detector_util import detector_python
    from tests.executors_util import until

    detector_python()
    SHOTS.mkdir(exist_ok=True)
    demo_classes_ensure(trainer)
    project = Project.objects.create(owner=trainer, name="Lego")
    train = demo_import_start(user=trainer, project=project, name="lego-train", count=30, seed=3, start=0)
    val = demo_import_start(user=trainer, project=project, name="lego-val", count=10, seed=3, start=500)
    for version in (train, val):
        until(lambda v=version: DatasetVersion.objects.get(pk=v.pk).state == "ready", 120, "the demo imports")
    detector_register()
    train.refresh_from_db()
    val.refresh_from_db()

    _login(page, live_server, trainer)
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.get_by_role("link", name="Train a model").click()
    page.get_by_label("Training dataset").select_option(label=f"lego-train v1 (30 · {train.gt_box_count})")
    page.get_by_label("Validation dataset").select_option(label=f"lego-val v1 (10 · {val.gt_box_count})")
    page.get_by_label("Training targets").select_option(sorted(train.class_counts["gt"]))
    page.get_by_role("button", name="Count positive / negative samples").click()
    page.locator("#targets table").wait_for()
    page.get_by_label("Model name").fill("lego-detector")
    for key, value in (("epochs", "2"), ("save_every_epochs", "1"), ("image_size", "128"), ("mosaic", "0")):
        page.locator(f"#id_cfg_{key}").fill(value)
    page.screenshot(path=str(SHOTS / "training-form.png"), full_page=True)
    page.get_by_role("button", name="Start").click()
    page.get_by_role("heading", name="Outputs").wait_for(timeout=180_000)
    page.get_by_role("link", name="lego-detector v1").click()
    links = page.locator("#stages a[href*='/evaluations/']")  # the platform's mAP, once each stage is evaluated
    links.first.wait_for(timeout=180_000)
    until(lambda: links.count() == 3, 60, "every stage's evaluation")
    page.locator("#chart-curve-loss").wait_for()
    page.screenshot(path=str(SHOTS / "model-trained.png"), full_page=True)

    page.get_by_role("link", name="Diagnosis").click()
    page.get_by_role("heading", name="Model diagnosis").wait_for()
    # the dataset's prediction sets, as the plain link gives them (no race with the form's htmx reload)
    page.goto(f"{live_server.url}/evaluations/?version={val.pk}")
    boxes = page.locator("input[name=prediction_sets]")
    boxes.first.wait_for()
    for i in range(min(2, boxes.count())):
        boxes.nth(i).check()
    page.get_by_role("button", name="Evaluate").click()
    page.get_by_role("heading", name="Summary").wait_for(timeout=60_000)
    page.locator("#chart-ap").wait_for()
    page.screenshot(path=str(SHOTS / "diagnosis.png"), full_page=True)
    evaluation = Evaluation.objects.annotate(sets=Count("prediction_sets")).get(version=val, sets=2)
    assert len(evaluation.result["sets"]) == 2 and len(evaluation.result["comparison"]) == 1

    # the validation images with a missed object, boxes coloured by outcome; one of them side by side
    pset = evaluation.prediction_sets.order_by("id")[0]
    page.goto(f"{live_server.url}/datasets/{val.pk}/?pset={pset.pk}&outcome=FN&score=0.05")
    page.locator("rect.outcome-FN").first.wait_for()
    page.screenshot(path=str(SHOTS / "dataset-outcomes.png"), full_page=True)
    page.locator("figure.asset a").first.click()
    page.get_by_role("heading", name="Ground truth", exact=True).wait_for()
    page.wait_for_load_state("networkidle")  # the image itself, for the picture
    page.screenshot(path=str(SHOTS / "asset-outcomes.png"), full_page=True)


def test_send_a_dataset_to_label_studio_and_watch_the_labelling_progress(
    page, live_server, label_studio, worker, trainer, tmp_path
):
    from datasets.models import Labelling
    from tests.test_labelling import five_images, region

    SHOTS.mkdir(exist_ok=True)
    version = five_images(trainer, tmp_path)
    _login(page, live_server, trainer)
    page.goto(f"{live_server.url}/datasets/{version.pk}/")
    page.get_by_role("link", name="Send to labelling").click()
    page.select_option("select[name=classes]", ["cat", "dog"])
    page.get_by_label("Show the existing ground truth as editable pre-annotations").check()
    page.get_by_role("button", name="Send to Label Studio").click()
    page.get_by_role("heading", name="Labelling #").wait_for()
    # the worker sends the images; the page follows by itself and then links into Label Studio
    link = page.locator("a.tool-link")
    link.wait_for(timeout=60_000)
    labelling = Labelling.objects.get()
    assert link.get_attribute("href") == f"{label_studio.url}/projects/{labelling.ls_project_id}/data"
    page.locator("#labelling-progress .state-running").wait_for(timeout=60_000)  # every image sent
    page.locator(".labelled-count", has_text="labelled 0 of 5").wait_for()
    first = next(iter(label_studio.tasks(labelling.ls_project_id)))
    label_studio.annotation_create(first["id"], [region("cat", 10, 10, 20, 20)])  # a labeller submits
    page.locator(".labelled-count", has_text="labelled 1 of 5").wait_for(timeout=20_000)
    page.screenshot(path=str(SHOTS / "labelling.png"), full_page=True)
    page.goto(f"{live_server.url}/projects/{version.group.project_id}/")
    assert page.locator("a.labelling-progress", has_text="labelled 1 of 5").count() == 1


def test_the_seed_002_story_one_iteration_round_in_the_browser(page, live_server, worker, trainer, tmp_path, settings):
    """Import, prepare the iteration, train the initial model, run one round (mine, label through the oracle,
    merge, train), and read the history and the trend chart."""
    from datasets.demo import CLASSES, write_voc_zip
    from datasets.models import DatasetVersion
    from datasets.services import demo_classes_ensure, demo_import_start, import_execute
    from iterations.models import Iteration
    from models_app.executors import detector_register
    from tests.detector_util import detector_python
    from tests.executors_util import until
    from tests.factories import ProjectFactory

    detector_python()
    settings.YMIR_ORACLE_LABELLER = True
    SHOTS.mkdir(exist_ok=True)
    demo_classes_ensure(trainer)
    project = ProjectFactory(owner=trainer, name="Lego loop")
    detector_register()

    def imported(name: str, count: int, start: int, gt: bool = True, owner_project=project) -> DatasetVersion:
        version = demo_import_start(
            user=trainer, project=owner_project, name=name, count=count, seed=9, start=start, gt=gt
        )
        assert version.task_id is not None
        import_execute(version.task_id)
        return DatasetVersion.objects.get(pk=version.pk)

    val = imported("val", 8, 100)
    imported("pool", 24, 200, gt=False)
    hidden = imported("pool-gt", 24, 200, owner_project=ProjectFactory(owner=trainer))
    _login(page, live_server, trainer)
    # the training set through the import page
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.get_by_role("link", name="Import a dataset").click()
    page.get_by_label("Name").fill("train")
    page.get_by_label("Zip file").set_input_files(
        str(write_voc_zip(tmp_path / "t.zip", count=20, seed=9, width=320, height=240))
    )
    page.get_by_role("button", name="Start import").click()
    page.locator("#dataset-state .state-ready").wait_for(timeout=90_000)

    # prepare the iteration: the start button says what is missing until everything is set
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.get_by_role("link", name="Iterations").click()
    assert page.get_by_role("button", name="Start iterating").is_disabled()
    page.locator("#missing").wait_for()
    page.select_option("select[name=train_version]", label="train v1 (20)")
    page.select_option("select[name=pool_version]", label="pool v1 (24)")
    page.select_option("select[name=val_version]", label="val v1 (8)")
    page.select_option("select[name=test_versions]", label="val v1")
    assert page.locator("select[name=training_image]").input_value() != ""  # the built-in detector by default
    page.select_option("select[name=class_names]", list(CLASSES))
    page.get_by_label("Top-k per round").fill("6")
    page.get_by_label("Skip near-duplicate images among the picks").check()
    page.get_by_label("Or after this many rounds (optional)").fill("1")
    page.get_by_label("Training hyper-parameters (JSON)").fill(
        '{"epochs": 2, "save_every_epochs": 2, "image_size": 96, "batch_size": 8, "mosaic": 0.0}'
    )
    page.locator("#missing").wait_for(state="detached")
    page.get_by_role("button", name="Start iterating").click()
    page.get_by_role("heading", name="Iteration: loop").wait_for()
    Iteration.objects.filter(project=project).update(oracle_version=hidden)  # the test's labeller

    def round_section(number: int):
        return page.locator(f"section.round:has(h2:text-is('Round {number}'))")

    def step(number: int, name: str) -> None:
        round_section(number).locator(f"li[data-step={name}]").get_by_role("button", name="Start").click()
        if name != "train":
            round_section(number).locator(f"li[data-step={name}] .state-done").wait_for(timeout=240_000)
        if name == "label":
            page.screenshot(path=str(SHOTS / "iteration-round.png"), full_page=True)

    step(0, "train")  # the initial model, trained here from the training set
    round_section(1).wait_for(timeout=300_000)  # opens once round 0's model is evaluated
    for name in ("prepare", "mine", "label", "merge", "train"):
        if name == "mine":  # prefilled from the loop's settings
            mine = round_section(1).locator("li[data-step=mine]")
            assert mine.get_by_label("skip near-duplicates").is_checked()
            assert not mine.get_by_label("rare classes first").is_checked()
            page.screenshot(path=str(SHOTS / "iteration-mine-step.png"), full_page=True)
        step(1, name)
    until(lambda: Iteration.objects.get(project=project).state == Iteration.State.FINISHED, 300, "the loop's end")
    page.reload()
    rows = page.locator("table.history tbody tr")
    assert rows.count() == 2
    assert rows.nth(1).locator("td").nth(2).inner_text() == "6"  # picked
    assert rows.nth(1).locator("td.map").inner_text() != "—"
    assert page.locator("canvas#chart-map-trend").is_visible()
    page.screenshot(path=str(SHOTS / "iteration.png"), full_page=True)
    assert val.pk in Iteration.objects.get(project=project).test_versions.values_list("id", flat=True)
    mined = Iteration.objects.get(project=project).rounds.get(number=1)
    assert mined.settings["diversity"] is True and mined.settings["class_balance"] is False


def test_try_a_published_algorithm_and_open_the_device_page(page, live_server, trainer, tmp_path, workspace):
    from deployment import services
    from tests.test_deployment import image_bytes, tiny_stage

    SHOTS.mkdir(exist_ok=True)
    stage = tiny_stage(trainer, tmp_path)
    algorithm = services.algorithm_publish(user=trainer, stage=stage, name="tiny detector")
    services.quantize_and_compare(algorithm.pk)
    device, _token = services.device_add(user=trainer, name="edge-1", kind="Jetson", location="line 3")
    _login(page, live_server, trainer)
    page.goto(f"{live_server.url}/algorithms/")
    page.get_by_role("link", name="tiny detector").click()
    picture = tmp_path / "bright.png"
    picture.write_bytes(image_bytes(200))
    page.locator("input[name=image]").set_input_files(str(picture))
    page.get_by_role("button", name="Detect").click()
    page.locator("#tried-count").wait_for()
    assert page.locator("svg rect.pred").count() == 2
    assert page.locator("td.int8-map").inner_text() != "—"
    page.screenshot(path=str(SHOTS / "algorithm.png"), full_page=True)
    page.goto(f"{live_server.url}/devices/{device.pk}/")
    page.get_by_role("button", name="Deploy").click()
    page.get_by_role("button", name="Switch off").wait_for()
    page.screenshot(path=str(SHOTS / "device.png"), full_page=True)
