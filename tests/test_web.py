"""`housebox serve`: the API refuses bad input with 400 + JSON, serves nothing outside the samples
folder, queues concurrent jobs, and the page generates a sample in headless Debian chromium."""

import http.client
import json
import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import train_tiny_run
from housebox.audio.io import save_audio
from housebox.data.prepare import load_track, read_manifest
from housebox.web.server import JobQueue, RequestError, ServerSettings, start_server

JSON = {"Content-Type": "application/json"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def run_dir(demo_data, tmp_path_factory):
    """VQ-VAE and top-level prior only (samples are decoded from the top level): a few seconds."""
    return train_tiny_run(demo_data, tmp_path_factory.mktemp("webrun"), vqvae_steps=4, prior_steps=4)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    samples = tmp_path_factory.mktemp("served")
    running = start_server(run_dir, ServerSettings(port=0, samples_dir=str(samples), max_seconds=4.0,
                                                   max_upload_bytes=200_000))
    assert running.server.server_address[0] == "127.0.0.1"
    yield running
    running.stop()


def call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON or raw bytes) for a request sent with its path exactly as given."""
    host, port = server.server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, (json.loads(data) if kind == "application/json" else data)


def generate(server, **fields):
    status, job = call(server, "POST", "/api/generate", json.dumps(fields).encode(),
                       {"Content-Type": "application/json"})
    assert status == 202, job
    return job


def wait_done(server, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    version = -1
    while time.time() < deadline:
        status, job = call(server, "GET", f"/api/jobs/{job_id}?wait=5&version={version}")
        assert status == 200
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        version = job["version"]
    raise AssertionError(f"job {job_id} not done after {timeout} s")


def test_generate_through_the_api_with_a_prime(server, demo_data, tmp_path):
    clip = load_track(demo_data, read_manifest(demo_data)[0]["id"])[:16000] / 32768.0
    save_audio(tmp_path / "clip.wav", clip, 16000)
    status, upload = call(server, "POST", "/api/upload?name=clip.wav", (tmp_path / "clip.wav").read_bytes())
    assert status == 200 and upload["seconds"] == 1.0
    job = wait_done(server, generate(server, artist="Dawn Atlas", genre=["deep house"], seconds=1.0, seed=3,
                                     prime=upload["upload"])["job"])
    assert job["state"] == "done", job
    status, sample = call(server, "GET", f"/api/samples/{job['folder']}")
    assert status == 200 and sample["prime"] and sample["seed"] == 3
    assert sample["tracks"][0]["originality"]["verdict"] == "original"
    status, wav = call(server, "GET", sample["tracks"][0]["url"])
    assert status == 200 and wav[:4] == b"RIFF"


@pytest.mark.parametrize("path", [
    "/samples/../../../../etc/passwd",
    "/samples/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/samples/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/samples//etc/passwd",
    "/samples/%2fetc%2fpasswd",
    "/samples/outside-link",
    "/samples/outside-dir/passwd",
    "/samples/.uploads/secret.wav",
    "/samples/a%00b",
    "/static/../server.py",
    "/static/..%2fserver.py",
])
def test_nothing_outside_the_samples_folder_is_served(server, path):
    samples = server.app.samples_dir
    for name, target in (("outside-link", "/etc/passwd"), ("outside-dir", "/etc")):
        if not (samples / name).is_symlink():
            os.symlink(target, samples / name)
    (samples / ".uploads" / "secret.wav").write_bytes(b"RIFF")
    status, body = call(server, "GET", path)
    assert status == 404 and body == {"error": "not found"}


@pytest.mark.parametrize("fields, message", [
    ({"seconds": 60}, "at most 4"),
    ({"seconds": -1}, "above 0"),
    ({"seconds": "long"}, "seconds must be a number"),
    ({"artist": "Nobody"}, "unknown artist 'Nobody'"),
    ({"genre": ["polka"]}, "unknown genre 'polka'"),
    ({"temperature": 0}, "temperature"),
    ({"bpm": 5}, "bpm must be between 20 and 400"),
    ({"bpm": "fast"}, "bpm must be a number"),
    ({"prime": "../../etc/passwd"}, "no such upload"),
    ({"top_k": -1}, "top_k must be 0"),
    ({"top_p": 0}, "top_p must be above 0"),
    ({"cfg_scale": 11}, "cfg_scale must be between 0 and 10"),
    ({"beat_guidance": "hard"}, "beat_guidance must be a number"),
])
def test_bad_generate_requests_get_400_with_a_message(server, fields, message):
    request = {"artist": "Dawn Atlas", "seconds": 1, **fields}
    status, body = call(server, "POST", "/api/generate", json.dumps(request).encode(), JSON)
    assert status == 400 and message in body["error"], body


def test_bad_uploads_get_400_with_a_message(server):
    status, body = call(server, "POST", "/api/upload?name=clip.wav", b"this is not audio at all")
    assert status == 400 and "not usable audio" in body["error"]
    status, body = call(server, "POST", "/api/upload?name=run.exe", b"MZ...")
    assert status == 400 and "not an audio file name" in body["error"]
    status, body = call(server, "POST", "/api/upload?name=big.wav", b"\0" * 300_000)
    assert status == 400 and "too big" in body["error"]
    status, body = call(server, "POST", "/api/generate", b"{not json", JSON)
    assert status == 400 and "JSON" in body["error"]
    status, body = call(server, "POST", "/api/generate", b"{}")
    assert status == 415 and "application/json" in body["error"]
    status, body = call(server, "GET", "/api/jobs/none?wait=abc")
    assert status == 400 and "wait must be a number" in body["error"]


def test_uploads_are_bounded_by_length_and_forgotten(server, tmp_path):
    """A small file holding hours of (silent) audio is refused by its decoded length; uploads older than a
    day are deleted; a samples folder with an odd name does not break the list."""
    import soundfile as sf

    silence = tmp_path / "silence.flac"
    sf.write(silence, np.zeros(8000 * 700, dtype=np.int16), 8000, format="FLAC")  # 700 s in a few kB
    assert silence.stat().st_size < 200_000
    status, body = call(server, "POST", "/api/upload?name=silence.flac", silence.read_bytes())
    assert status == 400 and "longer than 600 s" in body["error"], body
    stale = server.app.samples_dir / ".uploads" / ("0" * 32 + ".wav")
    stale.write_bytes(b"RIFF")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    clip = tmp_path / "clip.wav"
    save_audio(clip, np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32), 16000)
    status, body = call(server, "POST", "/api/upload?name=clip.wav", clip.read_bytes())
    assert status == 200 and not stale.exists()
    odd = server.app.samples_dir / "odd name!"
    odd.mkdir(exist_ok=True)
    (odd / "report.json").write_text("{}")
    status, body = call(server, "GET", "/api/samples")
    assert status == 200 and all(s["name"] != "odd name!" for s in body["samples"])


def test_samples_from_the_command_line_and_evaluate_are_listed_by_the_page(run_dir, tmp_path):
    """`housebox sample` without -o writes into RUN/samples, the folder `serve` lists by default; the folders
    `evaluate` recorded for the run (RUN/evaluations.json) are listed and served as `evaluation/ARTIST`, but
    not one recorded outside the run's own surroundings."""
    from housebox.cli import main
    from housebox.evaluate.run import record_evaluation

    assert main(["sample", str(run_dir), "--artist", "Dawn Atlas", "--seconds", "1", "--device", "cpu"]) == 0
    evaluation = run_dir.parent / "evaluation"  # where the demo evaluates: beside the run
    assert main(["sample", str(run_dir), "--artist", "South Lane", "--seconds", "1", "--device", "cpu",
                 "-o", str(evaluation / "samples" / "south-lane")]) == 0
    record_evaluation(run_dir, evaluation)
    record_evaluation(run_dir, tmp_path / "elsewhere")  # not beside the run: never served
    (tmp_path / "elsewhere" / "samples" / "x").mkdir(parents=True, exist_ok=True)
    (tmp_path / "elsewhere" / "samples" / "x" / "report.json").write_text("{}")
    running = start_server(run_dir, ServerSettings(port=0))
    try:
        status, body = call(running, "GET", "/api/samples")
        assert status == 200
        by_name = {s["name"]: s for s in body["samples"]}
        assert len(by_name) == 2 and "evaluation/south-lane" in by_name, by_name.keys()
        assert [s["artist"] for s in by_name.values() if s["made_by"] == "sample"] == ["Dawn Atlas"]
        assert by_name["evaluation/south-lane"]["made_by"] == "evaluate"
        assert by_name["evaluation/south-lane"]["artist"] == "South Lane"
        status, one = call(running, "GET", "/api/samples/evaluation/south-lane")
        assert status == 200 and one == by_name["evaluation/south-lane"]
        status, wav = call(running, "GET", one["tracks"][0]["url"])
        assert status == 200 and wav[:4] == b"RIFF"
        for path in ("/samples/evaluation/../../run/config.json", "/samples/evaluation/south-lane/../../../x",
                     "/api/samples/evaluation-2/x"):
            assert call(running, "GET", path)[0] == 404, path
    finally:
        running.stop()


def test_audio_files_answer_byte_ranges_so_the_browser_can_seek(server):
    job = wait_done(server, generate(server, artist="South Lane", seconds=1, seed=5)["job"])
    path = f"/samples/{job['folder']}/sample_000.wav"
    status, whole = call(server, "GET", path)
    assert status == 200 and whole[:4] == b"RIFF"
    for header, expected in (("bytes=0-3", whole[:4]), ("bytes=100-", whole[100:]), ("bytes=-10", whole[-10:]),
                             (f"bytes=10-{10 ** 9}", whole[10:])):
        status, part = call(server, "GET", path, headers={"Range": header})
        assert status == 206 and part == expected, header
    status, _ = call(server, "GET", path, headers={"Range": f"bytes={len(whole)}-"})
    assert status == 416
    status, part = call(server, "GET", path, headers={"Range": "pages=1-2"})
    assert status == 200 and part == whole  # a range we do not understand: the whole file


def test_other_web_pages_cannot_drive_the_server(server):
    """DNS rebinding (a foreign Host) and cross-site requests (another Origin, a form's content type, a
    browser's cross-site mark) get 403 before anything runs; the page's own requests pass."""
    port = server.server.server_address[1]
    for host, expected in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), (f"[::1]:{port}", 200),
                           (f"evil.example:{port}", 403), ("127.0.0.1:1", 403), ("127.0.0.1", 403)):
        status, body = call(server, "GET", "/api/info", headers={"Host": host})
        assert status == expected, (host, body)
    queued = len(server.app.jobs._jobs)
    request = json.dumps({"artist": "Dawn Atlas", "seconds": 1}).encode()
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"},
                    {**JSON, "Origin": "http://evil.example"}, {**JSON, "Origin": f"http://127.0.0.1:{port + 1}"},
                    {**JSON, "Sec-Fetch-Site": "cross-site"}):
        status, body = call(server, "POST", "/api/generate", request, headers)
        assert status == 403, (headers, body)
    status, body = call(server, "POST", "/api/upload?name=clip.wav", b"--x\r\n", {"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 403 and "multipart/form-data" in body["error"]
    assert len(server.app.jobs._jobs) == queued  # nothing was started
    status, job = call(server, "POST", "/api/generate", request, {**JSON, "Origin": f"http://127.0.0.1:{port}",
                                                                   "Sec-Fetch-Site": "same-origin"})
    assert status == 202 and wait_done(server, job["job"])["state"] == "done"


def test_concurrent_requests_are_queued_and_all_finish(server):
    jobs, errors = [], []

    def submit(seed):
        try:
            jobs.append(generate(server, artist="South Lane", seconds=0.5, seed=seed))
        except AssertionError as err:
            errors.append(err)

    threads = [threading.Thread(target=submit, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(jobs) == 3
    states = [call(server, "GET", f"/api/jobs/{j['job']}")[1] for j in jobs]
    assert sum(s["state"] in ("running", "checking") for s in states) <= 1  # one worker
    done = [wait_done(server, j["job"]) for j in jobs]
    assert [d["state"] for d in done] == ["done"] * 3 and len({d["folder"] for d in done}) == 3


def test_job_queue_runs_one_job_at_a_time_and_refuses_when_full():
    release, log = threading.Event(), []

    def work(job, set_state):
        log.append(("start", job.id))
        release.wait(5)
        log.append(("end", job.id))

    jobs = JobQueue(work, max_queue=2)
    try:
        first = jobs.submit(type("S", (), {"seconds": 1.0, "n": 1})())
        while jobs.status(first.id)["state"] != "running":
            time.sleep(0.01)
        second, third = (jobs.submit(first.settings) for _ in range(2))
        assert [jobs.status(j.id)["position"] for j in (second, third)] == [1, 2]
        with pytest.raises(RequestError, match="busy") as refused:
            jobs.submit(first.settings)
        assert refused.value.status == 503
        release.set()
        assert jobs.status(third.id, wait=5, seen_version=2)["state"] in ("running", "done")
        assert jobs.status(third.id, wait=5, seen_version=3)["state"] == "done"
        starts_and_ends = [kind for kind, _ in log]
        assert starts_and_ends == ["start", "end"] * 3  # never two at once
    finally:
        release.set()
        jobs.close()


def test_jobs_report_tokens_can_be_cancelled_and_stop_at_the_time_limit(server, run_dir, tmp_path):
    """A running job reports the tokens it has sampled; a queued or running job is cancelled on request; a
    job past the server's time limit stops at its next sampling step; finished jobs are not kept forever."""
    first = generate(server, artist="Dawn Atlas", seconds=4, n=2, seed=1, top_k=40, top_p=0.9, cfg_scale=1.5,
                     beat_guidance=2)
    second = generate(server, artist="Dawn Atlas", seconds=4, n=2, seed=2)
    status, cancelled = call(server, "POST", f"/api/jobs/{second['job']}/cancel", b"", JSON)
    assert status == 200 and cancelled["state"] in ("cancelled", "running")
    assert wait_done(server, second["job"])["state"] == "cancelled"
    done = wait_done(server, first["job"])
    assert done["state"] == "done" and done["progress"]["done"] == done["progress"]["total"] == 2 * 500
    assert done["progress"]["what"] == "level 2, 2 tracks"
    assert set(done["progress"]) == {"what", "done", "total"}  # nothing internal (the throttle's clock) leaks out
    report = json.loads((server.app.samples_dir / done["folder"] / "report.json").read_text())
    assert {k: report["settings"][k] for k in ("top_k", "top_p", "cfg_scale", "beat_guidance")} == {
        "top_k": 40, "top_p": 0.9, "cfg_scale": 1.5, "beat_guidance": 2.0}
    status, body = call(server, "POST", "/api/jobs/nope/cancel", b"", JSON)
    assert status == 404

    strict = start_server(run_dir, ServerSettings(port=0, samples_dir=str(tmp_path), max_seconds=4.0,
                                                  max_job_seconds=0.0, keep_jobs=1))
    try:
        jobs = [generate(strict, artist="Dawn Atlas", seconds=1, seed=s) for s in range(2)]
        stopped = [wait_done(strict, j["job"]) for j in jobs[1:]]
        assert stopped[0]["state"] == "cancelled" and "limit of 0 s" in stopped[0]["error"]
        assert list(strict.app.jobs._jobs) == [jobs[1]["job"]]  # keep_jobs=1: the older one is forgotten
    finally:
        strict.stop()


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless browser test needs Debian's `chromium` package: apt-get install -y chromium")
    return path


def test_page_generates_a_sample_in_headless_chromium(server, tmp_path):
    """The page fills its form from the URL, generates, waits and shows the result. The virtual-time budget
    is generous (idle virtual time runs ahead of the clock; on a loaded machine 60 s was once too little):
    it costs nothing when the page is done sooner."""
    browser = chromium()
    url = f"{server.url}/?artist=Kinetic%20Unit&genre=tech%20house&seconds=1&temperature=0.9&seed=11&auto=1"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-1'}",
                          "--virtual-time-budget=180000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=300).stdout
    assert 'data-state="done"' in dom, dom[-2000:]
    assert dom.count('class="sample-audio"') == 1 and "<audio" in dom
    assert 'data-verdict="original"' in dom
    folder = next(p.name for p in server.app.samples_dir.iterdir()
                  if (p / "report.json").exists() and json.loads((p / "report.json").read_text()).get("seed") == 11)
    assert f"/samples/{folder}/sample_000.wav" in dom and f"/samples/{folder}/spectrogram.png" in dom
    shot = tmp_path / "page.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-2'}",
                    "--virtual-time-budget=10000", "--window-size=1100,1400", "--hide-scrollbars",
                    f"--screenshot={shot}", f"{server.url}/?show={folder}"],
                   capture_output=True, timeout=60)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_random_requests_never_crash_the_server(run_dir, tmp_path):
    """Property: whatever method, path, headers and JSON body arrive, the answer is a clear 4xx/2xx/5xx-busy
    with a JSON error, never a 500, and the server still answers afterwards (no job runs: queue of 0)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    running = start_server(run_dir, ServerSettings(port=0, samples_dir=str(tmp_path), max_seconds=4.0, max_queue=0))
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    containers = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=10), inner, max_size=4), max_leaves=12)
    json_values = st.one_of(scalars, scalars, scalars, containers)  # a field of the wrong type, mostly
    fields = st.fixed_dictionaries({}, optional={"artist": st.sampled_from(["Dawn Atlas", "unknown"]) | json_values,
                                                 **{k: json_values for k in (
        "genre", "seconds", "temperature", "seed", "n", "prime", "bpm", "top_k", "top_p", "cfg_scale",
        "beat_guidance")}})
    paths = st.sampled_from(["/api/generate", "/api/upload?name=a.wav", "/api/info", "/api/samples",
                             "/api/samples/x", "/api/jobs/abc", "/api/jobs/abc/cancel", "/samples/../x", "/",
                             "/static/app.js"]) | st.text(alphabet="/%.?=&abc019", max_size=30).map(lambda t: "/" + t)

    generate_requests = st.tuples(st.just("POST"), st.just("/api/generate"), fields, st.just("application/json"))
    other_requests = st.tuples(st.sampled_from(["GET", "POST"]), paths, fields | json_values,
                               st.sampled_from(["application/json", "audio/wav", "", "text/plain; charset=utf-8"]))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(request=generate_requests | other_requests)
    def one(request):
        method, path, body, kind = request
        headers = {"Content-Type": kind} if kind else {}
        payload = json.dumps(body).encode() if method == "POST" else None
        try:
            status, answer = call(running, method, path, payload, headers)
        except http.client.InvalidURL:
            return  # http.client refuses to send it: nothing reached the server
        assert status != 500, (method, path, body, answer)
        if status >= 400:
            assert isinstance(answer, dict) and "error" in answer or status == 416, answer

    try:
        one()
        assert call(running, "GET", "/api/info")[0] == 200
    finally:
        running.stop()
