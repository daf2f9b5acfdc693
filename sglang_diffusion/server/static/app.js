// The web page of `sglang serve`: a client of the server's own routes, nothing more.
// Images: POST v1/images/generations (v1/images/edits with an input image; response_format url)
// with an X-Progress-Id of our choosing, polled at v1/images/progress/{id}; cancel aborts the
// request (the server stops at the next step).
// Videos: POST v1/videos (input_reference: the input image), polled at v1/videos/{id}; cancel is
// DELETE v1/videos/{id}.
// Files are fetched with the API key (when the server has one) and shown from blob: URLs.
"use strict";

const POLL_MS = 250;
const RECENT = 12;
const $ = (id) => document.getElementById(id);

const page = {
  video: false,       // what the model makes, from /model_info's task
  takesImage: false,  // whether it takes an input image (edits, image-to-video)
  busy: null,         // the generation in flight: {cancel: () => void}
  files: new Map(),   // served file URL -> its blob: URL, fetched once (a page session holds a few files)
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const key = sessionStorage.getItem("sglang-api-key");
  return key ? {...extra, Authorization: `Bearer ${key}`} : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, {...options, headers: headers(options.headers)});
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401) askForKey();
    const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

// A served file as a blob: URL (same-origin files need the key; a bucket's URL is used as it is).
async function fileUrl(url) {
  if (new URL(url, location.href).origin !== location.origin) return url;
  if (!page.files.has(url)) {
    const response = await fetch(url, {headers: headers()});
    if (!response.ok) throw new ApiError(response.status, `cannot fetch ${url}: ${response.status}`);
    page.files.set(url, URL.createObjectURL(await response.blob()));
  }
  return page.files.get(url);
}

// The download name of a served file: its id (local .../img_<id>/content or a bucket's .../img_<id>.png).
function fileName(url, extension) {
  const id = url.match(/(img|video)_[0-9a-f]{32}/);
  return (id ? id[0] : "output") + extension;
}

function askForKey() {
  $("key-row").hidden = false;
  $("api-key").focus();
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setProgress(percent) { $("progress").value = percent; }

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));  // crypto.randomUUID needs a secure context
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the model ----------------------------------------------------------------------------

async function loadModel() {
  const info = await api("model_info");
  page.video = Boolean(info.task) && !["t2i", "i2i"].includes(info.task);
  const name = (info.served_model_names || [])[0] || info.model;
  $("model").textContent = name + (info.pipeline ? ` \u00b7 ${info.pipeline} on ${info.device}` : "");
  $("kind").textContent = page.video ? "video" : "image";
  $("frames-field").hidden = !page.video;
  page.takesImage = info.image_input === true || ["i2v", "ti2v", "i2i"].includes(info.task);
  $("image-field").hidden = !page.takesImage;
  const defaults = info.defaults || {}, limits = info.limits || {};
  const fields = {width: "width", height: "height", "num-frames": "num_frames", steps: "num_inference_steps",
                  seed: "seed", guidance: "guidance_scale"};
  for (const [id, name] of Object.entries(fields)) {
    if (defaults[name] != null) $(id).placeholder = defaults[name];
  }
  for (const id of ["width", "height"]) $(id).max = limits.max_resolution || "";
  $("steps").max = limits.max_inference_steps || "";
  $("num-frames").max = limits.max_num_frames || "";
  if (limits.max_prompt_chars) $("prompt").maxLength = $("negative-prompt").maxLength = limits.max_prompt_chars;
}

// ---- generating ---------------------------------------------------------------------------

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function requestBody() {
  const body = {prompt: $("prompt").value, negative_prompt: $("negative-prompt").value || undefined,
                width: number("width"), height: number("height"), num_inference_steps: number("steps"),
                seed: number("seed"), guidance_scale: number("guidance")};
  if (page.video) body.num_frames = number("num-frames");
  return body;
}

// A request body as JSON, or as multipart when it carries the input image (as the field `field`).
function encoded(body, field) {
  const image = page.takesImage ? $("image").files[0] : undefined;
  if (!image) return {body: JSON.stringify(body), headers: {"Content-Type": "application/json"}, image: false};
  const form = new FormData();
  for (const [name, value] of Object.entries(body)) {
    if (value !== undefined) form.append(name, value);
  }
  form.append(field, image);
  return {body: form, headers: {}, image: true};
}

async function generateImage(body, signal) {
  const progressId = randomId();
  let done = false;
  const poll = (async () => {
    while (!done) {
      await sleep(POLL_MS);  // the request registers its id first
      if (done) break;
      try {
        const p = await api(`v1/images/progress/${progressId}`);
        setProgress(p.progress);
        if (p.status === "queued") say("queued");
        else say(p.num_steps ? `step ${p.step} of ${p.num_steps}` : "encoding the prompt");
      } catch (e) { /* not registered yet, or finished meanwhile */ }
    }
  })();
  try {
    const request = encoded({...body, response_format: "url"}, "image");
    const route = request.image ? "v1/images/edits" : "v1/images/generations";
    const answer = await api(route, {method: "POST", signal, body: request.body,
                                     headers: {...request.headers, "X-Progress-Id": progressId}});
    const url = answer.data[0].url;
    return {kind: "image", url: await fileUrl(url), name: fileName(url, ".png"), size: answer.size};
  } finally {
    done = true;
    await poll;
  }
}

async function generateVideo(body, signal, setCancel) {
  const request = encoded(body, "input_reference");
  let job = await api("v1/videos", {method: "POST", signal, body: request.body, headers: request.headers});
  setCancel(() => api(`v1/videos/${job.id}`, {method: "DELETE"}).catch((e) => say(e.message, true)));
  while (!["completed", "failed", "expired"].includes(job.status)) {
    setProgress(job.progress);
    say(job.status === "queued" ? "queued" : `denoising: ${job.progress}%`);
    await sleep(POLL_MS);
    job = await api(`v1/videos/${job.id}`);
  }
  if (job.status !== "completed") {
    throw new ApiError(0, job.error ? `${job.error.code}: ${job.error.message}` : `the job is ${job.status}`);
  }
  return {kind: "video", url: await fileUrl(job.url), name: `${job.id}.mp4`, size: job.size};
}

async function generate(event) {
  event.preventDefault();
  if (page.busy) return;
  const controller = new AbortController();
  page.busy = {cancel: () => controller.abort()};
  $("generate").disabled = true;
  $("cancel").disabled = false;
  setProgress(0);
  say("sending");
  const started = performance.now();
  try {
    const body = requestBody();
    const onJob = (cancel) => { page.busy.cancel = cancel; };  // a video job is cancelled by its id
    const result = page.video ? await generateVideo(body, controller.signal, onJob)
                              : await generateImage(body, controller.signal);
    setProgress(100);
    show(result);
    say(`done in ${((performance.now() - started) / 1000).toFixed(1)} s (${result.size})`);
  } catch (e) {
    setProgress(0);
    const cancelled = e.name === "AbortError" || /cancel/i.test(e.message);
    say(cancelled ? "cancelled" : e.message, !cancelled);
  } finally {
    page.busy = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
    loadRecent();
  }
}

function show(result) {
  const shown = document.createElement(result.kind === "video" ? "video" : "img");
  shown.id = "result-" + result.kind;
  shown.src = result.url;
  if (result.kind === "video") Object.assign(shown, {controls: true, autoplay: true, loop: true, muted: true});
  $("result").replaceChildren(shown);
  const link = $("download");
  link.href = result.url;
  link.download = result.name;
  link.textContent = `Download ${result.name}`;
  link.hidden = false;
}

// ---- recent results -----------------------------------------------------------------------

async function loadRecent() {
  try {
    const list = await api(page.video ? `v1/videos?limit=${RECENT}` : `v1/images?limit=${RECENT}`);
    const items = list.data.filter((item) => !page.video || item.status === "completed");
    const buttons = await Promise.all(items.map(recentButton));
    $("recent").replaceChildren(...buttons);
  } catch (e) { /* no key yet: the list comes once it is given */ }
}

async function recentButton(item) {
  const button = document.createElement("button");
  button.type = "button";
  const when = new Date(item.created_at * 1000).toLocaleTimeString();
  if (page.video) {
    button.textContent = `${item.prompt || item.id} \u00b7 ${item.size} \u00b7 ${when}`;
    button.onclick = async () => show({kind: "video", url: await fileUrl(item.url), name: `${item.id}.mp4`,
                                       size: item.size});
  } else {
    const url = await fileUrl(item.url);
    const thumb = document.createElement("img");
    thumb.src = url;
    thumb.alt = item.id;
    button.append(thumb, when);
    button.onclick = () => show({kind: "image", url, name: fileName(item.url, ".png"), size: ""});
  }
  return button;
}

// ---- LoRA adapters ------------------------------------------------------------------------

async function loadLoras() {
  let loras;
  try { loras = await api("v1/list_loras"); } catch (e) { return; }
  const merged = {};
  for (const adapters of Object.values(loras.active || {})) {
    for (const a of adapters) merged[a.nickname] = a.strength;
  }
  $("loras").hidden = !loras.loaded_adapters.length;
  $("lora-list").replaceChildren(...loras.loaded_adapters.map(({nickname}) => {
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML = `<label><input type="checkbox" class="lora-on"> <span></span></label>
                     <label>strength <input type="number" class="lora-strength" step="0.1" value="1"></label>`;
    row.dataset.nickname = nickname;
    row.querySelector("span").textContent = nickname;
    row.querySelector(".lora-on").checked = nickname in merged;
    if (nickname in merged) row.querySelector(".lora-strength").value = merged[nickname];
    return row;
  }));
}

async function applyLoras() {
  const rows = [...$("lora-list").children].filter((row) => row.querySelector(".lora-on").checked);
  try {
    if (rows.length) {
      await api("v1/set_lora", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({
        lora_nickname: rows.map((row) => row.dataset.nickname),
        strength: rows.map((row) => Number(row.querySelector(".lora-strength").value))})});
    } else {
      await api("v1/unmerge_lora_weights", {method: "POST"});
    }
    say(rows.length ? `merged ${rows.map((row) => row.dataset.nickname).join(", ")}` : "adapters unmerged");
  } catch (e) { say(e.message, true); }
  loadLoras();
}

// ---- start --------------------------------------------------------------------------------

async function connect() {
  try {
    await api("v1/models");
    $("key-row").hidden = !sessionStorage.getItem("sglang-api-key");
    say("ready");
  } catch (e) {
    say(e.status === 401 ? "this server needs its API key" : e.message, true);
    return;
  }
  await Promise.all([loadRecent(), loadLoras()]);
}

document.addEventListener("DOMContentLoaded", async () => {
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => page.busy && page.busy.cancel());
  $("lora-apply").addEventListener("click", applyLoras);
  $("api-key").value = sessionStorage.getItem("sglang-api-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("sglang-api-key", $("api-key").value.trim());
    connect();
  });
  try {
    await loadModel();
  } catch (e) {
    say(`cannot read model_info: ${e.message}`, true);
    return;
  }
  await connect();
  document.body.dataset.ready = "true";
});
