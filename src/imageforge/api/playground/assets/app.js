// The imageforge playground: a page on the public API only, with no build step.
//
// What the server offers beyond the GPT Image 2 contract is read from its /openapi.json, the
// way the Python SDK does: live events, long-poll, the task listing, quotes and usage are
// used where the document lists them; otherwise the page polls, and the gallery is this
// browser's own history of the key's tasks.
"use strict";

(() => {
  const ROOT = document.documentElement.dataset.root || "";
  const KEY_STORAGE = "imageforge.apiKey";
  const HISTORY_PREFIX = "imageforge.history.";
  const HISTORY_LIMIT = 50;
  const GALLERY_SIZE = 24;
  const CONTRACT_MODELS = ["gpt-image-2", "gpt-image-2-r"];
  const CONTRACT_RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "5:4", "4:5",
    "2:1", "1:2", "21:9", "9:21"];
  const CONTRACT_FOUR_K_RATIOS = ["16:9", "9:16", "2:1", "1:2", "21:9", "9:21"];
  const RESOLUTIONS = ["1k", "2k", "4k"];
  const FIELD_IDS = {
    api_key: "api-key", prompt: "prompt", model: "model", quality: "quality", ratio: "ratio",
    resolution: "resolution", size: "size", image_urls: "image-urls",
  };

  const $ = (id) => document.getElementById(id);
  const form = $("generate");

  // ---- What the server offers --------------------------------------------------------

  /** Flags and model rules from the server's OpenAPI document (none if it has none). */
  async function readCapabilities() {
    const found = {
      events: false, longPoll: false, cancel: false, listing: false, quote: false,
      usage: false, idempotencyKeys: false, models: CONTRACT_MODELS.slice(),
      ratios: CONTRACT_RATIOS.slice(), fourKRatios: CONTRACT_FOUR_K_RATIOS.slice(), modelRules: {},
    };
    let doc;
    try {
      const response = await fetch(`${ROOT}/openapi.json`, { headers: { Accept: "application/json" } });
      if (!response.ok) return found;
      doc = await response.json();
    } catch {
      return found;
    }
    const paths = {};
    for (const [path, item] of Object.entries(doc.paths || {})) {
      paths[path.replace(/\{[^/{}]+\}/g, "{}")] = item || {};
    }
    const op = (path, method) => (paths[path] || {})[method];
    const result = op("/v1/result/{}", "get");
    const create = op("/v1/image2/images", "post");
    const paramNames = (operation, where) => new Set((operation && operation.parameters || [])
      .filter((p) => p && p.in === where).map((p) => String(p.name).toLowerCase()));
    found.longPoll = paramNames(result, "query").has("wait");
    const wait = ((result && result.parameters) || []).find((p) => p && p.name === "wait");
    const most = Number(wait && wait.schema && wait.schema.maximum);
    // Held for at most what the server allows, and under what proxies tend to cut (60 s).
    found.longPollSeconds = Math.max(1, Math.min(25, Number.isFinite(most) && most > 0 ? most : 25));
    found.events = Boolean(op("/v1/result/{}/events", "get"));
    found.cancel = Boolean(op("/v1/result/{}/cancel", "post"));
    found.listing = Boolean(op("/v1/tasks", "get"));
    found.quote = Boolean(op("/v1/image2/images/quote", "post"));
    found.usage = Boolean(op("/v1/usage", "get"));
    found.idempotencyKeys = paramNames(create, "header").has("idempotency-key");

    const body = ((doc.components || {}).schemas || {}).CreateImageRequest;
    const properties = (body && body.properties) || {};
    const values = (schema) => ((schema && schema.enum) || []).filter((v) => v !== null);
    if (values(properties.model).length) found.models = values(properties.model);
    if (values(properties.ratio).length) found.ratios = values(properties.ratio);
    for (const rule of (body && body.allOf) || []) {
      const then = rule.then && rule.then.properties;
      if (!rule.if || !then) continue;
      const name = rule.if.properties && rule.if.properties.model && rule.if.properties.model.const;
      if (name) found.modelRules[name] = { resolutions: values(then.resolution) };
      // "4K only in these ratios": the rule whose condition is resolution 4k.
      const fourK = (rule.if.allOf || []).some((c) => c && c.properties && c.properties.resolution
        && c.properties.resolution.const === "4k");
      if (fourK && values(then.ratio).length) found.fourKRatios = values(then.ratio);
    }
    return found;
  }

  // ---- The API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, param, code, retryAfter = 0) {
      super(message);
      this.status = status;
      this.param = param;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function apiKey() {
    return $("api-key").value.trim();
  }

  /** A request to this server with the key; its JSON, or an ApiError with the server's words. */
  async function api(method, path, { body, headers = {}, signal } = {}) {
    const key = apiKey();
    if (!key) throw new ApiError(401, "Enter an API key first.", "api_key", "missing_api_key");
    let response;
    try {
      response = await fetch(`${ROOT}${path}`, {
        method,
        headers: {
          Authorization: `Bearer ${key}`,
          Accept: "application/json",
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
          ...headers,
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "The server could not be reached. Is it running?", null, "network");
    }
    if (response.ok) return response.json();
    throw await errorFrom(response);
  }

  async function errorFrom(response) {
    let detail = {};
    try {
      const parsed = await response.json();
      detail = typeof parsed.error === "object" && parsed.error ? parsed.error
        : { message: parsed.error || parsed.detail || parsed.message };
    } catch { /* not JSON: say the status */ }
    let param = detail.param || null;
    if (response.status === 401) param = "api_key";
    const message = plainWords(response, detail.message);
    const retryAfter = Number(response.headers.get("Retry-After")) || 0;
    return new ApiError(response.status, message, param, detail.code || null, retryAfter);
  }

  function plainWords(response, message) {
    const text = typeof message === "string" && message ? message : `HTTP ${response.status}`;
    if (response.status === 401) return `This API key is not valid (${text})`;
    if (response.status === 402) return `Not enough credit on this key: ${text}`;
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      return wait ? `${text} Try again in ${wait} s.` : text;
    }
    if (response.status >= 500) return `The server could not do it right now: ${text}`;
    return text;
  }

  function uuid4() {
    // crypto.randomUUID exists only on https and localhost; getRandomValues everywhere.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  const sleep = (ms, signal) => new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });
  const isDone = (task) => task.status === "completed" || task.status === "failed";

  /** Follow a task until it is terminal, calling onState with each new state. */
  async function follow(taskId, onState, signal) {
    if (caps.events) {
      try {
        const last = await followEvents(taskId, onState, signal);
        if (last && isDone(last)) return last;
      } catch (error) {
        if (signal.aborted) throw error;
        // A broken stream: carry on by polling, which always works.
      }
    }
    let delay = 1000;
    let failures = 0;
    for (;;) {
      const path = `/v1/result/${encodeURIComponent(taskId)}${caps.longPoll ? `?wait=${caps.longPollSeconds}` : ""}`;
      let task;
      try {
        task = await api("GET", path, { signal });
        failures = 0;
      } catch (error) {
        // A busy or restarting server, or a dropped connection: the task goes on, so keep
        // asking (after Retry-After where it says one), and give up only after a while.
        if (!(error instanceof ApiError) || !isTransient(error) || ++failures > 10) throw error;
        await sleep(Math.max(error.retryAfter * 1000, delay), signal);
        delay = Math.min(delay * 1.5, 5000);
        continue;
      }
      onState(task);
      if (isDone(task)) return task;
      if (!caps.longPoll) {
        await sleep(delay, signal);
        delay = Math.min(delay * 1.5, 5000);
      }
    }
  }

  const isTransient = (error) => error.status === 0 || error.status === 429 || error.status >= 500;

  /** Server-sent events read with fetch: EventSource cannot send the Authorization header. */
  async function followEvents(taskId, onState, signal) {
    const response = await fetch(`${ROOT}/v1/result/${encodeURIComponent(taskId)}/events`, {
      headers: { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream" },
      signal,
    });
    if (!response.ok || !response.body) throw await errorFrom(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let last = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return last;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        try {
          last = JSON.parse(data);
        } catch {
          continue;
        }
        if (last && last.status) onState(last);
        if (last && isDone(last)) {
          reader.cancel().catch(() => {});
          return last;
        }
      }
    }
  }

  // ---- The form -----------------------------------------------------------------------

  function sizeMode() {
    return form.elements.size_mode.value;
  }

  function requestBody() {
    const body = { model: $("model").value, prompt: $("prompt").value };
    body.quality = $("quality").value;
    if (sizeMode() === "size") {
      body.size = $("size").value.trim().toLowerCase().replace(/\s*[×*]\s*/, "x");
    } else {
      body.ratio = $("ratio").value;
      body.resolution = $("resolution").value;
    }
    const urls = $("image-urls").value.split(/\s+/).map((u) => u.trim()).filter(Boolean);
    if (urls.length) body.image_urls = urls;
    return body;
  }

  function fieldFor(param) {
    if (!param) return null;
    const name = String(param).replace(/\[\d+\]$/, "");
    return Object.prototype.hasOwnProperty.call(FIELD_IDS, name) ? name : null;
  }

  function clearErrors() {
    for (const el of form.querySelectorAll("[data-error-for]")) {
      el.hidden = true;
      el.textContent = "";
    }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  /** The error next to the field it concerns (the answer's `param`), else under the button. */
  function showError(error, { focus = true } = {}) {
    const field = fieldFor(error.param);
    const target = form.querySelector(`[data-error-for="${field || ""}"]`);
    target.textContent = error.message;
    target.hidden = false;
    if (field) {
      const input = $(FIELD_IDS[field]);
      input.setAttribute("aria-invalid", "true");
      if (field === "size" && sizeMode() !== "size") setSizeMode("size");
      if (focus) input.focus();
    }
  }

  function setSizeMode(mode) {
    for (const radio of form.elements.size_mode) radio.checked = radio.value === mode;
    applySizeMode();
  }

  function applySizeMode() {
    const exact = sizeMode() === "size";
    $("size-fields").hidden = !exact;
    $("ratio-fields").hidden = exact;
  }

  /** Resolutions and 4K ratios the chosen model allows, as the OpenAPI document states. */
  function applyModelRules() {
    const rules = caps.modelRules[$("model").value];
    const allowed = rules && rules.resolutions.length ? rules.resolutions : RESOLUTIONS;
    const ratio = $("ratio").value;
    for (const option of $("resolution").options) {
      option.disabled = !allowed.includes(option.value)
        || (option.value === "4k" && !caps.fourKRatios.includes(ratio));
    }
    const chosen = $("resolution").selectedOptions[0];
    if (chosen && chosen.disabled) $("resolution").value = "1k";
  }

  let quoteTimer = null;
  let quoteRun = 0;

  function scheduleQuote() {
    clearTimeout(quoteTimer);
    quoteTimer = setTimeout(updateQuote, 300);
  }

  /** The resolved size and price before submitting (the quote route charges nothing). */
  async function updateQuote() {
    const out = $("quote");
    if (!caps.quote || !apiKey()) {
      out.textContent = "";
      return;
    }
    const run = ++quoteRun;
    try {
      // The price does not depend on the words: an empty prompt is said at submit, not here.
      const body = { ...requestBody(), prompt: $("prompt").value.trim() || "-" };
      const quote = await api("POST", "/v1/image2/images/quote", { body });
      if (run !== quoteRun) return;
      clearErrors();
      const quality = quote.quality ? ` · ${quote.quality} quality` : "";
      out.textContent = `${quote.width} × ${quote.height} px${quality} · ${quote.amount} ${quote.currency}`;
      out.dataset.state = "ok";
      $("quality-hint").hidden = Boolean(quote.quality);
    } catch (error) {
      if (run !== quoteRun || !(error instanceof ApiError)) return;
      clearErrors();
      out.textContent = "";
      // While typing, say what is wrong without moving the focus.
      showError(error, { focus: false });
    }
  }

  // ---- The result ---------------------------------------------------------------------

  let current = null;
  let started = 0;
  let clock = null;

  function showState(task) {
    const text = $("status-text");
    const bar = $("progress");
    const seconds = Math.round((Date.now() - started) / 1000);
    if (task.status === "failed") {
      text.textContent = `Failed: ${task.error || "no reason given"}${task.refunded ? " (refunded)" : ""}`;
      text.className = "failed";
      bar.hidden = true;
      return;
    }
    if (task.status === "completed") {
      text.textContent = `Completed in ${seconds} s.`;
      text.className = "completed";
      bar.hidden = true;
      return;
    }
    const progress = typeof task.progress === "number" ? ` ${Math.round(task.progress)}%` : "";
    text.textContent = `${task.status === "queued" ? "Queued" : "Processing"}${progress} · ${seconds} s`;
    text.className = "";
    bar.hidden = false;
    if (typeof task.progress === "number") bar.value = task.progress;
    else bar.removeAttribute("value");
  }

  function showImage(task, caption) {
    const figure = $("result");
    const img = $("result-image");
    img.src = task.image_url;
    img.alt = caption ? `Generated image: ${caption}` : "Generated image";
    $("result-open").href = task.image_url;
    $("result-full").href = task.image_url;
    $("result-download").href = task.image_url;
    $("result-download").setAttribute("download", `${task.id}.png`);
    $("result-caption").textContent = `${task.id}${caption ? ` — ${caption}` : ""}`;
    figure.hidden = false;
  }

  let following = null;

  /** Cancel the task being watched (where the server lists the cancel route). */
  async function cancelCurrent() {
    if (!following) return;
    const button = $("cancel");
    button.disabled = true;
    try {
      const task = await api("POST", `/v1/result/${encodeURIComponent(following)}/cancel`);
      if (isDone(task)) showState(task);
    } catch (error) {
      if (error instanceof ApiError) $("status-text").textContent = `Could not cancel: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    if (!apiKey()) {
      showError(new ApiError(401, "Enter an API key first.", "api_key"));
      return;
    }
    if (!$("prompt").value.trim()) {
      showError(new ApiError(400, "Write what to draw.", "prompt"));
      return;
    }
    if (current) current.abort();
    const controller = new AbortController();
    current = controller;
    const body = requestBody();
    const button = $("submit");
    button.disabled = true;
    button.textContent = "Generating…";
    $("result").hidden = true;
    started = Date.now();
    let task;
    try {
      task = await api("POST", "/v1/image2/images", {
        body,
        headers: caps.idempotencyKeys ? { "Idempotency-Key": uuid4() } : {},
        signal: controller.signal,
      });
      remember({ id: task.id, created: task.created, model: task.model, prompt: body.prompt });
      showState(task);
      // On a phone the result is below the form: bring it into view.
      if (window.matchMedia("(max-width: 859px)").matches) {
        $("result-heading").scrollIntoView({ behavior: "smooth", block: "start" });
      }
      following = task.id;
      $("cancel").hidden = !caps.cancel;
      clearInterval(clock);
      let last = task;
      clock = setInterval(() => { if (!isDone(last)) showState(last); }, 1000);
      const final = await follow(task.id, (state) => { last = state; showState(state); }, controller.signal);
      if (final.status === "completed") showImage(final, body.prompt);
    } catch (error) {
      if (error && error.name === "AbortError") return;
      if (!(error instanceof ApiError)) throw error;
      if (task) {
        $("status-text").textContent = `Lost track of ${task.id}: ${error.message}`;
      } else {
        $("status-text").textContent = "Not created: see the message in the form.";
        showError(error);
      }
    } finally {
      clearInterval(clock);
      if (current === controller) {
        following = null;
        $("cancel").hidden = true;
        current = null;
        button.disabled = false;
        button.textContent = "Generate";
      }
      refreshBalance();
      refreshGallery();
    }
  }

  // ---- Balance and gallery ------------------------------------------------------------

  async function refreshBalance() {
    const out = $("balance");
    if (!caps.usage || !apiKey()) {
      out.textContent = "";
      return;
    }
    try {
      const usage = await api("GET", "/v1/usage?days=30");
      const balance = usage.balance === null || usage.balance === undefined
        ? "unlimited credit" : `balance ${usage.balance} ${usage.currency}`;
      out.textContent = `Key ${usage.key_id}: ${balance}; spent ${usage.spend} ${usage.currency} on ${usage.tasks} ${usage.tasks === 1 ? "task" : "tasks"} in the last 30 days.`;
    } catch (error) {
      out.textContent = "";
      if (error instanceof ApiError && error.status === 401) showError(error, { focus: false });
    }
  }

  /** A short, non-reversible name for the key, so each key has its own history. */
  function historyKey() {
    let hash = 0x811c9dc5;
    for (const ch of apiKey()) {
      hash ^= ch.codePointAt(0);
      hash = Math.imul(hash, 0x01000193) >>> 0;
    }
    return HISTORY_PREFIX + hash.toString(16);
  }

  function history() {
    try {
      return JSON.parse(localStorage.getItem(historyKey()) || "[]");
    } catch {
      return [];
    }
  }

  function remember(entry) {
    const kept = [entry, ...history().filter((e) => e.id !== entry.id)].slice(0, HISTORY_LIMIT);
    try {
      localStorage.setItem(historyKey(), JSON.stringify(kept));
    } catch { /* storage full or off: the gallery is a convenience */ }
  }

  async function galleryTasks() {
    if (caps.listing) {
      const page = await api("GET", `/v1/tasks?limit=${GALLERY_SIZE}`);
      return page.data.map((task) => ({ task, prompt: task.prompt || "" }));
    }
    // Fresh states (links expire), read one by one; tasks this key no longer sees are dropped.
    const entries = history().slice(0, GALLERY_SIZE);
    const states = await Promise.all(entries.map(async (entry) => {
      try {
        return { task: await api("GET", `/v1/result/${encodeURIComponent(entry.id)}`), prompt: entry.prompt };
      } catch (error) {
        return error instanceof ApiError && error.status === 404 ? null
          : { task: { ...entry, status: "unknown" }, prompt: entry.prompt };
      }
    }));
    return states.filter(Boolean);
  }

  let galleryRun = 0;

  async function refreshGallery() {
    const list = $("gallery");
    const source = $("gallery-source");
    if (!apiKey()) {
      list.replaceChildren();
      source.textContent = "Enter an API key to see its images.";
      return;
    }
    source.textContent = caps.listing ? "This key's latest tasks."
      : "Tasks made from this browser with this key (the server does not list tasks).";
    const run = ++galleryRun;
    let items;
    try {
      items = await galleryTasks();
    } catch (error) {
      if (run === galleryRun) source.textContent = `Could not load the tasks: ${error.message}`;
      return;
    }
    if (run !== galleryRun) return;
    list.replaceChildren(...items.map(({ task, prompt }) => galleryItem(task, prompt)));
    if (!items.length) source.textContent += " None yet.";
  }

  function galleryItem(task, prompt) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tile";
    const label = prompt ? `${prompt} (${task.status})` : `${task.id} (${task.status})`;
    button.setAttribute("aria-label", label);
    if (task.status === "completed" && task.image_url) {
      const img = document.createElement("img");
      img.src = task.image_url;
      img.alt = "";
      img.loading = "lazy";
      button.append(img);
      button.addEventListener("click", () => {
        showImage(task, prompt);
        $("status-text").textContent = `Showing ${task.id}.`;
        $("status-text").className = "";
        $("result").scrollIntoView({ behavior: "smooth", block: "nearest" });
      });
    } else {
      const badge = document.createElement("span");
      badge.className = `badge ${task.status}`;
      badge.textContent = task.status;
      button.append(badge);
      button.title = task.error || task.id;
      button.addEventListener("click", () => {
        $("status-text").textContent = task.status === "failed"
          ? `${task.id} failed: ${task.error || "no reason given"}` : `${task.id} is ${task.status}.`;
      });
    }
    item.append(button);
    return item;
  }

  // ---- Start --------------------------------------------------------------------------

  let caps = {
    models: CONTRACT_MODELS, ratios: CONTRACT_RATIOS, fourKRatios: CONTRACT_FOUR_K_RATIOS, modelRules: {},
  };

  function fillSelect(select, values) {
    select.replaceChildren(...values.map((value) => new Option(value, value)));
  }

  async function start() {
    const stored = localStorage.getItem(KEY_STORAGE);
    if (stored) $("api-key").value = stored;
    caps = await readCapabilities();
    fillSelect($("model"), caps.models);
    fillSelect($("ratio"), caps.ratios);
    applySizeMode();
    applyModelRules();

    $("api-key").addEventListener("change", () => {
      const key = apiKey();
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
      clearErrors();
      refreshBalance();
      refreshGallery();
      scheduleQuote();
    });
    $("toggle-key").addEventListener("click", () => {
      const input = $("api-key");
      const showing = input.type === "text";
      input.type = showing ? "password" : "text";
      $("toggle-key").textContent = showing ? "Show" : "Hide";
      $("toggle-key").setAttribute("aria-pressed", String(!showing));
    });
    for (const radio of form.elements.size_mode) {
      radio.addEventListener("change", () => { applySizeMode(); scheduleQuote(); });
    }
    for (const id of ["model", "ratio", "resolution", "quality"]) {
      $(id).addEventListener("change", () => { applyModelRules(); scheduleQuote(); });
    }
    for (const id of ["size", "image-urls"]) $(id).addEventListener("input", scheduleQuote);
    $("prompt").addEventListener("keydown", (event) => {
      // Ctrl+Enter (Cmd+Enter on a Mac) submits from the prompt, as chat boxes do.
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
    $("cancel").addEventListener("click", cancelCurrent);
    $("refresh-gallery").addEventListener("click", () => { refreshBalance(); refreshGallery(); });
    form.addEventListener("submit", submit);
    document.body.dataset.ready = "true";
    refreshBalance();
    refreshGallery();
    updateQuote();
  }

  start();
})();
