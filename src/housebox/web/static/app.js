// housebox page: fills the form from /api/info, submits jobs, polls their status, shows results.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function setStatus(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function option(select, value) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = value;
  select.appendChild(element);
}

function verdictBadge(originality) {
  const badge = document.createElement("span");
  const verdict = originality.verdict;
  badge.className = `verdict ${verdict.replace(" ", "-")}`;
  badge.dataset.verdict = verdict;
  badge.textContent = verdict;
  return badge;
}

function showSample(sample) {
  $("result").hidden = false;
  $("result-title").textContent = `${sample.name}: ${sample.artist || "unknown"}, ` +
    `${(sample.genres || []).join(", ") || "any genre"}, ${sample.seconds} s, temperature ${sample.temperature}, seed ${sample.seed}`;
  const tracks = $("result-tracks");
  tracks.replaceChildren();
  for (const track of sample.tracks) {
    const box = document.createElement("div");
    box.className = "track";
    const title = document.createElement("p");
    title.textContent = `${track.file} `;
    title.appendChild(verdictBadge(track.originality));
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.className = "sample-audio";
    audio.src = track.url;
    const detail = document.createElement("p");
    detail.className = "detail";
    detail.textContent = track.originality.detail;
    box.append(title, audio, detail);
    tracks.appendChild(box);
  }
  const image = $("result-spectrogram");
  image.hidden = !sample.spectrogram;
  if (sample.spectrogram) image.src = sample.spectrogram;
  $("result-page").href = sample.page;
}

async function refreshList() {
  const { samples } = await api("/api/samples");
  const list = $("sample-list");
  list.replaceChildren();
  for (const sample of samples) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "show";
    button.addEventListener("click", () => showSample(sample));
    const verdicts = sample.tracks.map((t) => t.originality.verdict).join(", ");
    const by = sample.made_by === "evaluate" ? "made by evaluate, " : "";
    item.append(button, ` ${sample.name} (${by}${sample.artist}, ${sample.seconds} s; ${verdicts})`);
    list.appendChild(item);
  }
  return samples;
}

async function uploadPrime() {
  const file = $("prime").files[0];
  if (!file) return null;
  const { upload } = await api(`/api/upload?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
  return upload;
}

function describe(status) {
  if (status.state === "queued") return `Queued (position ${status.position})…`;
  if (status.state === "checking") return `Checking originality… ${status.elapsed} s`;
  const p = status.progress || {};
  const tokens = p.total ? ` ${p.what}: ${p.done} / ${p.total} tokens (${Math.floor(100 * p.done / p.total)}%),` : "";
  return `Generating ${status.n} × ${status.seconds} s…${tokens} ${status.elapsed} s`;
}

async function waitFor(job) {
  let status = job;
  const cancel = $("cancel");
  cancel.hidden = false;
  cancel.onclick = () => api(`/api/jobs/${job.job}/cancel`, { method: "POST" }).catch(() => {});
  try {
    while (!["done", "failed", "cancelled"].includes(status.state)) {
      setStatus(describe(status), status.state);
      status = await api(`/api/jobs/${status.job}?wait=5&version=${status.version}`);
    }
  } finally {
    cancel.hidden = true;
  }
  return status;
}

async function generate(event) {
  if (event) event.preventDefault();
  showError("");
  $("generate").disabled = true;
  try {
    setStatus("Sending…", "sending");
    const body = {
      artist: $("artist").value,
      genre: $("genre").value ? [$("genre").value] : [],
      seconds: parseFloat($("seconds").value),
      temperature: parseFloat($("temperature").value),
      bpm: $("bpm").value === "" ? null : parseFloat($("bpm").value),
      seed: $("seed").value === "" ? null : parseInt($("seed").value, 10),
      top_k: parseInt($("top_k").value || "0", 10),
      top_p: parseFloat($("top_p").value || "1"),
      cfg_scale: parseFloat($("cfg_scale").value || "1"),
      beat_guidance: parseFloat($("beat_guidance").value || "2"),
      prime: await uploadPrime(),
    };
    const job = await api("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const done = await waitFor(job);
    if (done.state === "failed") throw new Error(`generation failed: ${done.error}`);
    if (done.state === "cancelled") {
      setStatus(`Cancelled (${done.error}).`, "cancelled");
      return;
    }
    setStatus(`Done in ${done.elapsed} s.`, "done");
    showSample(await api(`/api/samples/${encodeURIComponent(done.folder)}`));
    await refreshList();
  } catch (error) {
    setStatus("Stopped.", "error");
    showError(error.message);
  } finally {
    $("generate").disabled = false;
  }
}

async function start() {
  const info = await api("/api/info");
  $("run-name").textContent = `run ${info.run} · ${info.sample_rate} Hz · at most ${info.max_seconds} s a track`;
  info.artists.forEach((name) => option($("artist"), name));
  const named = info.artists.find((name) => name !== "unknown");  // a real artist first, not "unknown"
  if (named) $("artist").value = named;
  option($("genre"), "");
  info.genres.forEach((name) => option($("genre"), name));
  $("seconds").max = info.max_seconds;
  $("generate-form").addEventListener("submit", generate);
  // ?artist=&genre=&seconds=&temperature=&seed= fill the form; &auto=1 submits it; ?show=NAME shows a sample
  const params = new URLSearchParams(window.location.search);
  for (const key of ["artist", "genre", "seconds", "temperature", "seed", "top_k", "top_p", "cfg_scale",
                     "beat_guidance"]) {
    if (params.has(key)) $(key).value = params.get(key);
  }
  const samples = await refreshList();
  if (params.has("show")) {
    showSample(await api(`/api/samples/${encodeURIComponent(params.get("show"))}`));
  } else if (params.get("auto") === "1") {
    await generate();
  } else if (samples.length) {
    showSample(samples[0]);
  }
}

start().catch((error) => showError(error.message));
