"""`housebox serve`: a local web page to generate tracks, listen to them, see them and check them.

Standard library only (`http.server`). One worker thread generates, one job at a time; requests
wait in a queue and the page polls a status endpoint (long polling: a request returns as soon as the
job moves on, or after a few seconds). The server binds 127.0.0.1 unless told otherwise and serves
only its static page and the files inside the samples folder: paths that resolve anywhere else
(`..`, encoded or not, absolute paths, symlinks leading out, hidden files) get 404.

    GET  /                         the page (static/index.html, app.js, style.css)
    GET  /api/info                 the run's artists, genres and limits
    GET  /api/samples[/NAME]       earlier sample folders, newest first (or one), with verdicts: the samples
                                   folder's and those `housebox evaluate` wrote for the run (`evaluation/ARTIST`)
    POST /api/upload?name=F.wav    a prime clip as the raw request body -> {"upload": ID}
    POST /api/generate             JSON {artist, genre, seconds, temperature, seed, n, prime, bpm, top_k, top_p,
                                   cfg_scale, beat_guidance} -> {"job": ID}
    GET  /api/jobs/ID?wait=S       a job's state: queued (position), running (tokens done), checking, done,
                                   failed, cancelled
    POST /api/jobs/ID/cancel       stop it (a running one at its next step); jobs also stop at max_job_seconds
    GET  /samples/NAME/FILE        a file of a sample folder (wav, png, json, html); NAME as listed

Other web pages the user visits must not drive it: every request must name this server in its Host
header (a loopback-bound server answers only to 127.0.0.1, localhost and [::1] at its port, which
defeats DNS rebinding; one bound elsewhere also to `allowed_hosts`, or to any name when that is empty),
and a POST is refused when its Origin is another site's, when the browser marks it cross-site
(Sec-Fetch-Site), or when it carries a type an HTML form can send without asking (text/plain,
multipart/form-data, application/x-www-form-urlencoded); /api/generate takes application/json only.
"""

from __future__ import annotations

import json
import mimetypes
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from housebox.store import strict_json

STATIC = Path(__file__).parent / "static"
UPLOADS = ".uploads"  # inside the samples folder; hidden, so never served
MAX_JSON_BYTES = 64 * 1024
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.[a-z0-9]{1,5}$")
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
FORM_TYPES = {"text/plain", "multipart/form-data", "application/x-www-form-urlencoded"}  # sent cross-site unasked


class RequestError(ValueError):
    """A request the server refuses: HTTP `status` with a one-line message."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    samples_dir: str | None = None  # default RUN/samples
    max_seconds: float = 120.0  # longest track a request may ask for
    max_tracks: int = 4  # tracks per request
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_seconds: float = 600.0  # decoded length of a prime clip (bytes alone do not bound it)
    upload_days: float = 1.0  # uploads older than this are deleted
    max_queue: int = 8  # jobs waiting; more get 503
    max_job_seconds: float = 1800.0  # a generation running longer is stopped
    keep_jobs: int = 100  # finished jobs remembered (older ones are forgotten)
    check: bool = True  # originality check after each generation
    long_poll_seconds: float = 10.0
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the loopback ones (bound elsewhere only)


# ---- jobs ------------------------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    settings: object  # housebox.generate.pipeline.SampleSettings
    created: float = field(default_factory=time.time)
    state: str = "queued"  # queued | running | checking | done | failed | cancelled
    started: float | None = None
    finished: float | None = None
    folder: str | None = None
    error: str | None = None
    version: int = 0  # bumped on every change, for long polling
    cancel: bool = False  # asked to stop
    progress: dict = field(default_factory=dict)  # {"what", "done", "total"}: tokens of the sampling now running
    progress_announced: float = 0.0  # when a progress change last bumped `version` (throttles long polling)


class JobQueue:
    """Generation jobs run one at a time by a single worker thread; `status` can wait for a change."""

    FINISHED = ("done", "failed", "cancelled")

    def __init__(self, work, max_queue: int, keep: int = 100):
        self._work = work  # Job -> None; sets job.folder, may raise
        self._keep = keep
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []
        self._changed = threading.Condition()
        self._max_queue = max_queue
        self._thread = threading.Thread(target=self._loop, name="housebox-generate", daemon=True)
        self._thread.start()

    def submit(self, settings) -> Job:
        with self._changed:
            waiting = sum(self._jobs[j].state == "queued" for j in self._order)
            if waiting >= self._max_queue:
                raise RequestError(f"busy: {waiting} requests are already waiting; try again later",
                                   HTTPStatus.SERVICE_UNAVAILABLE)
            job = Job(id=secrets.token_hex(8), settings=settings)
            self._jobs[job.id] = job
            self._order.append(job.id)
        self._queue.put(job)
        return job

    def status(self, job_id: str, wait: float = 0.0, seen_version: int = -1) -> dict | None:
        """The job as JSON, after waiting up to `wait` s for a version newer than `seen_version`."""
        deadline = time.time() + max(0.0, wait)
        with self._changed:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            while job.version <= seen_version and job.state not in self.FINISHED and time.time() < deadline:
                self._changed.wait(timeout=deadline - time.time())
            return self._describe(job)

    def _describe(self, job: Job) -> dict:
        queued = [j for j in self._order if self._jobs[j].state == "queued"]
        now = time.time()
        return {"job": job.id, "state": job.state, "version": job.version, "folder": job.folder, "error": job.error,
                "position": queued.index(job.id) + 1 if job.id in queued else 0,
                "elapsed": round((job.finished or now) - (job.started or now), 1),
                "seconds": job.settings.seconds, "n": job.settings.n, "progress": dict(job.progress)}

    def cancel(self, job_id: str) -> dict | None:
        """Stop a job: a queued one at once, a running one at its next sampling step (its state says when)."""
        with self._changed:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state not in self.FINISHED:
                job.cancel = True
                if job.state == "queued":
                    job.state, job.finished, job.error = "cancelled", time.time(), "cancelled before it started"
                job.version += 1
                self._changed.notify_all()
            return self._describe(job)

    def report_progress(self, job: Job, what: str, done: int, total: int) -> None:
        """Record a running job's tokens (a new version at most every half second, for long polling)."""
        with self._changed:
            job.progress.update(what=what, done=done, total=total)
            if time.time() - job.progress_announced > 0.5 or done == total:
                job.progress_announced = time.time()
                job.version += 1
                self._changed.notify_all()

    def _forget_old(self) -> None:
        """Forget the oldest finished jobs beyond `keep` (called holding the lock)."""
        finished = [j for j in self._order if self._jobs[j].state in self.FINISHED]
        for job_id in finished[: max(0, len(finished) - self._keep)]:
            self._order.remove(job_id)
            del self._jobs[job_id]

    def _update(self, job: Job, **changes) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(job, key, value)
            job.version += 1
            if job.state in self.FINISHED:
                self._forget_old()
            self._changed.notify_all()

    def _loop(self) -> None:
        from housebox.generate.sampling import Cancelled

        while (job := self._queue.get()) is not None:
            with self._changed:
                if job.state == "cancelled":
                    self._forget_old()
                    continue
            self._update(job, state="running", started=time.time())
            try:
                self._work(job, lambda state: self._update(job, state=state))
                self._update(job, state="done", finished=time.time())
            except Cancelled as err:
                self._update(job, state="cancelled", finished=time.time(), error=str(err))
            except Exception as err:  # a failed job must not stop the worker
                message = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
                self._update(job, state="failed", finished=time.time(), error=message)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


# ---- the application: run, samples folder, checker -------------------------------------------------


class App:
    """What the handlers need: the loaded run, its samples folder, the job queue and the checker."""

    def __init__(self, run_dir: str | Path, settings: ServerSettings = ServerSettings(), device: str = "cpu"):
        from housebox.generate.pipeline import load_run

        self.settings = settings
        self.run = load_run(run_dir, device, precision="auto")  # bf16 priors on a GPU that has it
        self.samples_dir = Path(settings.samples_dir or Path(run_dir) / "samples").resolve()
        (self.samples_dir / UPLOADS).mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(run_dir)
        self._checker = None
        self._checker_problem: str | None = None
        self.jobs = JobQueue(self._generate, settings.max_queue, settings.keep_jobs)

    # -- work done by the worker thread --

    def _generate(self, job: Job, set_state) -> None:
        from housebox.generate.pipeline import generate, write_outputs
        from housebox.generate.sampling import Cancelled, watched

        limit = self.settings.max_job_seconds

        def watch(what: str, done: int, total: int) -> None:
            if job.cancel:
                raise Cancelled("cancelled")
            if time.time() - (job.started or time.time()) > limit:
                raise Cancelled(f"stopped: longer than the server's limit of {limit:g} s a job")
            self.jobs.report_progress(job, what, done, total)

        with watched(watch):
            generation = generate(self.run, job.settings, progress=False)
        folder = time.strftime("%Y%m%d-%H%M%S-") + job.id
        write_outputs(self.samples_dir / folder, generation, job.settings, self.run)
        job.folder = folder
        if self.settings.check:
            set_state("checking")
            checker = self._originality_checker()
            if checker is not None:
                checker.check_folder(self.samples_dir / folder)

    def _originality_checker(self):
        """Built on first use (the fingerprint index may take a while); None when there is no dataset."""
        if self._checker is None and self._checker_problem is None:
            from housebox.evaluate.originality import OriginalityChecker, training_data

            try:
                self._checker = OriginalityChecker(training_data(self.run.root))
            except ValueError as err:
                self._checker_problem = str(err)
        return self._checker

    # -- requests --

    def info(self) -> dict:
        return {"run": self.run.root.name, "artists": list(self.run.artists), "genres": list(self.run.genres),
                "max_seconds": self.settings.max_seconds, "max_tracks": self.settings.max_tracks,
                "max_upload_mb": round(self.settings.max_upload_bytes / 2**20, 1),
                "sample_rate": self.run.vqvae.config.sample_rate, "check": self.settings.check}

    def parse_generate(self, body: dict):
        """A JSON request -> SampleSettings, or RequestError naming the bad field."""
        from housebox.generate.pipeline import SampleSettings

        artist = body.get("artist") or "unknown"
        if artist not in self.run.artists:
            raise RequestError(f"unknown artist {artist!r}; known: {', '.join(self.run.artists)}")
        genres = body.get("genre") or []
        if not isinstance(genres, (str, list)):
            raise RequestError(f"genre must be a name or a list of names, got {genres!r}")
        genres = [genres] if isinstance(genres, str) else list(genres)
        for genre in genres:
            if not isinstance(genre, str) or genre.lower() not in self.run.genres:
                raise RequestError(f"unknown genre {genre!r}; known: {', '.join(self.run.genres)}")
        seconds = _number(body, "seconds", 10.0)
        if not 0 < seconds <= self.settings.max_seconds:
            raise RequestError(f"seconds must be above 0 and at most {self.settings.max_seconds:g}, got {seconds:g}")
        temperature = _number(body, "temperature", 1.0)
        if not 0 < temperature <= 3:
            raise RequestError(f"temperature must be above 0 and at most 3, got {temperature:g}")
        bpm = body.get("bpm")
        bpm = None if bpm in (None, "") else _number(body, "bpm", 0.0)
        if bpm is not None and not 20 <= bpm <= 400:
            raise RequestError(f"bpm must be between 20 and 400 (or empty: the artist's tempo), got {bpm:g}")
        n = int(_number(body, "n", 1))
        if not 1 <= n <= self.settings.max_tracks:
            raise RequestError(f"n must be 1..{self.settings.max_tracks}, got {n}")
        seed = body.get("seed")
        seed = secrets.randbelow(2**31) if seed in (None, "") else int(_number(body, "seed", 0))
        top_k = int(_number(body, "top_k", 0))
        if not 0 <= top_k <= 1_000_000:
            raise RequestError(f"top_k must be 0 (off) or a number of codes, got {top_k}")
        top_p = _number(body, "top_p", 1.0)
        if not 0 < top_p <= 1:
            raise RequestError(f"top_p must be above 0 and at most 1 (1: off), got {top_p:g}")
        guidance = {}
        for key in ("cfg_scale", "beat_guidance"):
            guidance[key] = _number(body, key, getattr(SampleSettings, key))
            if not 0 <= guidance[key] <= 10:
                raise RequestError(f"{key} must be between 0 and 10 (1: off), got {guidance[key]:g}")
        prime = body.get("prime") or None
        if prime is not None and (not isinstance(prime, str) or not UPLOAD_NAME.match(prime)
                                  or not (self.samples_dir / UPLOADS / prime).is_file()):
            raise RequestError("prime: no such upload (upload the clip first)")
        return SampleSettings(artist=artist, genres=tuple(g.lower() for g in genres), seconds=seconds, n=n,
                              temperature=temperature, seed=seed, bpm=bpm, top_k=top_k, top_p=top_p, **guidance,
                              prime=str(self.samples_dir / UPLOADS / prime) if prime else None)

    def save_upload(self, name: str, data: bytes) -> dict:
        """Keep a prime clip if it decodes as audio long enough to prime with."""
        from housebox.audio.io import AUDIO_EXTENSIONS, AudioError, load_audio

        suffix = Path(name).suffix.lower()
        if suffix not in AUDIO_EXTENSIONS:
            raise RequestError(f"upload: {name!r} is not an audio file name ({', '.join(sorted(AUDIO_EXTENSIONS))})")
        if not data:
            raise RequestError("upload: empty file")
        self._forget_old_uploads()
        path = self.samples_dir / UPLOADS / f"{secrets.token_hex(16)}{suffix}"
        path.write_bytes(data)
        try:
            audio = load_audio(path, max_seconds=self.settings.max_upload_seconds)
        except AudioError as err:
            path.unlink(missing_ok=True)
            raise RequestError(f"upload: {name} is not usable audio ({err.problem})") from None
        top_hop = max(self.run.vqvae.config.hops)
        if audio.seconds * self.run.vqvae.config.sample_rate < top_hop:
            path.unlink(missing_ok=True)
            raise RequestError(f"upload: {name} is too short to prime with ({audio.seconds:.3f} s)")
        return {"upload": path.name, "seconds": round(audio.seconds, 2)}

    def _forget_old_uploads(self) -> None:
        """Delete uploaded clips older than `upload_days` (a prime is used within minutes of its upload)."""
        cutoff = time.time() - self.settings.upload_days * 86400
        for old in (self.samples_dir / UPLOADS).iterdir():
            try:
                if UPLOAD_NAME.match(old.name) and old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass  # another request removed it, or it cannot be removed: not this request's problem

    @property
    def evaluation_dirs(self) -> dict[str, Path]:
        """What `housebox evaluate` generated for the run (read each time: an evaluation may finish while the
        server runs): listed and served as `evaluation/ARTIST` (`evaluation-2/...` an older one), never written."""
        return _evaluation_samples(self.run_dir)

    def _sample_folders(self, evaluations: dict[str, Path]) -> list[tuple[str, Path]]:
        """(name, folder) of every listable sample folder: the samples folder's, then the evaluations'."""
        found = []
        roots = [("", self.samples_dir)] + [(f"{prefix}/", root) for prefix, root in evaluations.items()]
        for prefix, root in roots:
            if root.is_dir():
                found += [(prefix + p.name, p) for p in root.iterdir()
                          if p.is_dir() and FOLDER_NAME.match(p.name) and (p / "report.json").is_file()]
        return found

    def _split(self, relative: str, evaluations: dict[str, Path] | None = None) -> tuple[Path, str]:
        """(root folder, path inside it) of `NAME/...` where NAME may start with an evaluation's prefix
        (`evaluations`: the run's, read once by a caller that splits many names; read here otherwise)."""
        prefix, _, rest = relative.partition("/")
        evaluations = self.evaluation_dirs if evaluations is None else evaluations
        if prefix in evaluations and rest:
            return evaluations[prefix], rest
        return self.samples_dir, relative

    def _folder(self, name: str, evaluations: dict[str, Path] | None = None) -> tuple[Path, bool]:
        """The folder of sample `name` (`FOLDER` in the samples folder, `evaluation/ARTIST` of an evaluation),
        and whether it is in the samples folder."""
        root, folder_name = self._split(name, evaluations)
        if not FOLDER_NAME.match(folder_name) or not (root / folder_name / "report.json").is_file():
            raise RequestError(f"no sample {name!r}", HTTPStatus.NOT_FOUND)
        return root / folder_name, root == self.samples_dir

    def samples(self, limit: int = 50) -> list[dict]:
        evaluations = self.evaluation_dirs  # read once for the whole listing
        folders = self._sample_folders(evaluations)
        folders.sort(key=lambda named: (named[1] / "report.json").stat().st_mtime, reverse=True)
        return [self.sample(name, evaluations) for name, _ in folders[:limit]]

    def sample(self, name: str, evaluations: dict[str, Path] | None = None) -> dict:
        folder, by_sample = self._folder(name, evaluations)
        report = json.loads((folder / "report.json").read_text())
        settings = report.get("settings", {})
        checked = report.get("originality", {}).get("samples", {})
        problem = self._checker_problem if self.settings.check else "originality check is off"
        url = f"/samples/{name}"
        tracks = []
        for wav in report.get("samples", []):
            result = checked.get(wav)
            tracks.append({"file": wav, "url": f"{url}/{wav}", "originality": _summary(result, problem)})
        return {"name": name, "created": round((folder / "report.json").stat().st_mtime, 1),
                "made_by": "sample" if by_sample else "evaluate",
                "artist": settings.get("artist"), "genres": settings.get("genres", []),
                "seconds": report.get("seconds"), "temperature": settings.get("temperature"),
                "seed": report.get("seed"), "prime": bool(settings.get("prime")), "tracks": tracks,
                "spectrogram": f"{url}/spectrogram.png" if (folder / "spectrogram.png").is_file() else None,
                "page": f"{url}/index.html"}

    def resolve_sample_file(self, relative: str) -> Path | None:
        """The file `relative` names inside the samples folder (or, as `evaluation/...`, inside the run's
        evaluation samples), or None (outside, hidden, missing)."""
        if "\x00" in relative or not relative or relative.startswith(("/", "\\")):
            return None
        root, relative = self._split(relative)
        path = (root / relative).resolve()
        inside = path.is_relative_to(root) and path != root
        if not inside or any(part.startswith(".") for part in path.relative_to(root).parts):
            return None
        return path if path.is_file() else None

    def close(self) -> None:
        self.jobs.close()


def _evaluation_samples(run_dir: str | Path) -> dict[str, Path]:
    """{prefix: samples folder} of the run's recorded evaluations, newest first: `evaluation`, `evaluation-2`..."""
    from housebox.evaluate.run import evaluation_folders

    found = [folder / "samples" for folder in evaluation_folders(Path(run_dir))]
    return {("evaluation" if i == 0 else f"evaluation-{i + 1}"): folder.resolve() for i, folder in enumerate(found)}


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """`Range: bytes=a-b` (or a-, or -n: the last n) -> (first, last) inclusive; None without a usable single
    range (the whole file is sent); "unsatisfiable" when it starts past the end."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if match is None or match.group(1) == match.group(2) == "":
        return None
    if match.group(1) == "":  # the last n bytes
        n = int(match.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else "unsatisfiable"
    first = int(match.group(1))
    last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    if first >= size:
        return "unsatisfiable"
    return (first, last) if last >= first else None


def _number(body: dict, key: str, default: float) -> float:
    value = body.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{key} must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RequestError(f"{key} must be a finite number")
    return number


def _summary(result: dict | None, problem: str | None) -> dict:
    """One track's verdict for the page."""
    if result is None:
        return {"verdict": "not checked", "detail": problem or "not checked yet"}
    best = ""
    fired = result.get("fired") or {}
    if result.get("matches"):
        m = result["matches"][0]
        best = f"best match: {m['artist']} ({m['track_id']}) at {m['track_start']:.1f} s"
    if "codes" in fired and "audio" not in fired and result.get("code_runs"):
        from housebox.report.pages import code_passage_text

        best = f"best match: {code_passage_text(result)}"
    codes = result.get("longest_code_seconds")
    status = (result.get("detectors") or {}).get("codes", "")
    codes_text = (f"codes {status}" if codes is None else f"codes {codes:.2f} s beyond what training tracks share"
                  + (f" ({status})" if "not checked" in status else ""))
    melody = result.get("longest_melody_seconds")
    melody_status = (result.get("detectors") or {}).get("melody", "")
    melody_text = (f"melody {melody_status}" if melody is None
                   else f"melody {melody:.2f} s beyond what training tracks share")
    matches = result.get("melody_matches") or []
    if matches and "melody" in (result.get("fired") or {}):
        m = matches[0]
        melody_text += (f" (like {m['artist']} ({m['track_id']}) at {m['track_start']:.1f} s, {m['semitones']:+d} "
                        f"semitones, {m['tempo']:.2f}x tempo)")
    detail = (f"{result['longest_match_seconds']:.1f} s longest passage matching a training track, "
              f"{result['matched_seconds']:.1f} s in all; {melody_text}; {codes_text}")
    why = f"{result['verdict']} by {', '.join(fired)}: " if fired else ""
    return {"verdict": result["verdict"], "detail": why + detail + (f"; {best}" if best else "")}


# ---- HTTP --------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server_version = "housebox"
    app: App  # set on the subclass made by make_server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the console shows what serve() prints

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            self._check_sender(method)
            self._route(method, url.path, parse_qs(url.query))
        except RequestError as err:
            self._json({"error": str(err)}, err.status)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as err:  # a bug must not leave the page without an answer
            self._json({"error": f"internal error: {type(err).__name__}: {str(err)[:200]}"},
                       HTTPStatus.INTERNAL_SERVER_ERROR)

    def _check_sender(self, method: str) -> None:
        """Refuse (403) a request another web page could have made: see the module's docstring."""
        host = self.headers.get("Host", "")
        bound_host, port = self.server.server_address[:2]
        name, _, given_port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        name = name.strip("[]").lower()
        if given_port != str(port):
            raise RequestError(f"Host {host!r} is not this server (port {port})", HTTPStatus.FORBIDDEN)
        if bound_host in LOOPBACK or self.app.settings.allowed_hosts:
            allowed = LOOPBACK | {h.lower() for h in self.app.settings.allowed_hosts}
            if bound_host not in LOOPBACK:
                allowed.add(str(bound_host).lower())
            if name not in allowed:
                raise RequestError(f"Host {host!r} is not this server", HTTPStatus.FORBIDDEN)
        if method != "POST":
            return
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            raise RequestError(f"requests from {origin} are refused", HTTPStatus.FORBIDDEN)
        if self.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise RequestError("cross-site requests are refused", HTTPStatus.FORBIDDEN)
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind in FORM_TYPES:
            raise RequestError(f"Content-Type {kind} is refused (an HTML form of any page could send it)",
                               HTTPStatus.FORBIDDEN)

    def _route(self, method: str, path: str, query: dict) -> None:
        app = self.app
        if method == "GET" and path in ("/", "/index.html"):
            return self._file(STATIC / "index.html")
        if method == "GET" and path.startswith("/static/"):
            name = path[len("/static/"):]
            if name in {p.name for p in STATIC.iterdir()}:
                return self._file(STATIC / name)
        elif method == "GET" and path == "/api/info":
            return self._json(app.info())
        elif method == "GET" and path == "/api/samples":
            return self._json({"samples": app.samples()})
        elif method == "GET" and path.startswith("/api/samples/"):
            return self._json(app.sample(unquote(path[len("/api/samples/"):])))
        elif method == "GET" and path.startswith("/api/jobs/"):
            try:
                wait = min(app.settings.long_poll_seconds, max(0.0, float(query.get("wait", ["0"])[0] or 0)))
                seen = int(query.get("version", ["-1"])[0] or -1)
            except ValueError:
                raise RequestError("wait must be a number of seconds and version a whole number") from None
            if wait != wait:
                raise RequestError("wait must be a number of seconds")
            status = app.jobs.status(path[len("/api/jobs/"):], wait=wait, seen_version=seen)
            if status is None:
                raise RequestError("no such job", HTTPStatus.NOT_FOUND)
            return self._json(status)
        elif method == "GET" and path.startswith("/samples/"):
            found = app.resolve_sample_file(unquote(path[len("/samples/"):]))
            if found is not None:
                return self._file(found)
        elif method == "POST" and path.startswith("/api/jobs/") and path.endswith("/cancel"):
            status = app.jobs.cancel(path[len("/api/jobs/"):-len("/cancel")])
            if status is None:
                raise RequestError("no such job", HTTPStatus.NOT_FOUND)
            return self._json(status)
        elif method == "POST" and path == "/api/upload":
            name = query.get("name", ["clip.wav"])[0]
            return self._json(app.save_upload(name, self._body(app.settings.max_upload_bytes, "upload")))
        elif method == "POST" and path == "/api/generate":
            if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
                raise RequestError("the request body must be JSON, sent as application/json",
                                   HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            try:
                body = json.loads(self._body(MAX_JSON_BYTES, "request") or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError("the request body must be JSON") from None
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object")
            job = app.jobs.submit(app.parse_generate(body))
            return self._json(app.jobs.status(job.id), HTTPStatus.ACCEPTED)
        raise RequestError("not found", HTTPStatus.NOT_FOUND)

    def _body(self, limit: int, what: str) -> bytes:
        """The request body, refused (400) beyond `limit` bytes without reading it."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(f"{what}: Content-Length is required") from None
        if length < 0 or length > limit:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise RequestError(f"{what} too big: {length / 2**20:.1f} MB, at most {limit / 2**20:.1f} MB")
        return self.rfile.read(length)

    def _json(self, data: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        payload = json.dumps(strict_json(data), allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def _file(self, path: Path) -> None:
        """The file, or the byte range the browser asks for (`Range: bytes=a-b`, so audio can seek)."""
        data = path.read_bytes()
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        wanted = _byte_range(self.headers.get("Range"), len(data))
        if wanted == "unsatisfiable":
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, body = HTTPStatus.OK, data
        if wanted is not None:
            first, last = wanted
            status, body = HTTPStatus.PARTIAL_CONTENT, data[first : last + 1]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {wanted[0]}-{wanted[1]}/{len(data)}")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)


def make_server(app: App) -> ThreadingHTTPServer:
    """Bind (port 0: a free one) without serving yet."""
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((app.settings.host, app.settings.port), handler)
    server.daemon_threads = True
    return server


@dataclass
class RunningServer:
    """A server serving in a background thread (for tests and notebooks)."""

    app: App
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.close()


def start_server(run_dir: str | Path, settings: ServerSettings = ServerSettings(),
                 device: str = "cpu") -> RunningServer:
    """Serve in a daemon thread; `.url` says where, `.stop()` ends it."""
    app = App(run_dir, settings, device)
    server = make_server(app)
    thread = threading.Thread(target=server.serve_forever, name="housebox-http", daemon=True)
    thread.start()
    return RunningServer(app=app, server=server, thread=thread)


def serve(run_dir: str | Path, settings: ServerSettings = ServerSettings(), device: str = "cpu") -> None:
    """Serve until Ctrl-C."""
    app = App(run_dir, settings, device)
    server = make_server(app)
    host, port = server.server_address[:2]
    print(f"housebox: serving {app.run.root} on http://{host}:{port}/  (samples in {app.samples_dir}; Ctrl-C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"housebox: warning: bound to {host}, so other machines can reach this page")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
