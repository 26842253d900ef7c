// seq2seq-serve web page: translate, chat (streamed over SSE) and a side-by-side model comparison.
//
// Plain ES module, no build step. It uses only the public HTTP API (docs/api.md): GET /models,
// POST /translate, POST /chat with "stream": true. Every API error has the body
// {"error": {"code", "message"}}; it is shown in the view's alert region (role="alert").

const $ = (selector, root = document) => root.querySelector(selector);
const languageNames = new Intl.DisplayNames(["en"], { type: "language" });

const ARCHITECTURES = {
  "context-init": { order: 0, label: "Context vector as the decoder's initial state (Sutskever et al., 2014)" },
  "context-every-step": { order: 1, label: "Context vector fed at every decoder step (Cho et al., 2014)" },
  attention: { order: 2, label: "Bidirectional encoder + Luong attention (2015)" },
};

function languageName(code) {
  try {
    return languageNames.of(code) || code;
  } catch {
    return code;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function formatScore(score, tokens) {
  const text = score.toFixed(2).replace("-", "−");
  return tokens ? `${text} (${(score / tokens).toFixed(2).replace("-", "−")}/token)` : text;
}

function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// ---------------------------------------------------------------------------------------------
// API calls and errors

class ApiError extends Error {
  constructor(status, code, message, { retryAfter = null, details = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.details = details;
  }
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "request failed";
  let details = null;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message, details = null } = body.error);
  } catch {
    // not JSON (a proxy's error page): keep the status text
  }
  return new ApiError(response.status, code, message, { retryAfter: response.headers.get("Retry-After"), details });
}

// API keys: a server with keys answers 401 without one. The page then asks for a key, keeps it
// in sessionStorage (this tab only, gone when it closes; never localStorage) and sends it as
// "Authorization: Bearer" with every API call. Requests that get 401 while the question is open
// all wait for the one answer.
const KEY_STORAGE = "seq2seq-api-key";
let keyQuestion = null;

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage disabled: the key lives as long as the question's answer
  }
}

function forgetKey() {
  try {
    sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: nothing was kept
  }
}

function askForKey(rejected) {
  if (keyQuestion) return keyQuestion;
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  $("#key-dialog-message").textContent = rejected
    ? "The server did not accept that key. Enter another one."
    : "This server asks for an API key.";
  input.value = "";
  keyQuestion = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = dialog.returnValue === "use" ? input.value.trim() : "";
        input.value = "";
        keyQuestion = null;
        if (key) {
          try {
            sessionStorage.setItem(KEY_STORAGE, key);
          } catch {
            // storage disabled: this request still gets the key
          }
        }
        resolve(key || null);
      },
      { once: true },
    );
  });
  dialog.returnValue = "";
  dialog.showModal();
  return keyQuestion;
}

async function api(path, body, { signal } = {}) {
  let key = storedKey();
  for (;;) {
    const init = { signal, headers: { Accept: "application/json" } };
    if (key) init.headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network_error", `cannot reach the server (${err.message})`);
    }
    if (response.status !== 401) {
      if (!response.ok) throw await errorFrom(response);
      return response;
    }
    const error = await errorFrom(response);
    const newer = storedKey(); // another request's question may have been answered meanwhile
    if (newer && newer !== key) {
      key = newer;
      continue;
    }
    if (key) forgetKey(); // the server turned it down
    key = await askForKey(Boolean(key));
    if (!key) throw error;
  }
}

const ERROR_TITLES = {
  401: "API key needed",
  403: "Not allowed with this key",
  404: "Not found",
  413: "Request too large",
  422: "Check your input",
  429: "The server is busy",
  500: "Server error",
  503: "Not available right now",
  504: "Took too long",
};

// Errors found before or outside an HTTP reply (status 0)
const LOCAL_ERROR_TITLES = {
  network_error: "Network error",
  invalid_input: "Check your input",
  stream_ended: "Connection lost",
};

// Titles by error code, where one status has several causes
const CODE_TITLES = { rate_limited: "Rate limit reached for this key" };

// An SSE `error` event carries the error body only; its code tells the status it stands for.
const CODE_STATUS = {
  invalid_request: 422,
  unauthorized: 401,
  forbidden: 403,
  overloaded: 429,
  rate_limited: 429,
  internal_error: 500,
  unavailable: 503,
  deadline_exceeded: 504,
};

function describeError(err) {
  const title =
    CODE_TITLES[err.code] || ERROR_TITLES[err.status] || LOCAL_ERROR_TITLES[err.code] || (err.status ? `HTTP ${err.status}` : "Error");
  let message = err.message || String(err);
  const available = err.details && err.details.available;
  if (Array.isArray(available) && available.length) message += ` (available: ${available.join(", ")})`;
  const retry = err.retryAfter ? `Retry in ${err.retryAfter} s.` : "";
  const code = err.status ? `HTTP ${err.status} · ${err.code}` : err.code || "";
  return { title, message, retry, code };
}

function showError(region, err) {
  const { title, message, retry, code } = describeError(err);
  const parts = [
    el("strong", { class: "alert-title", text: `${title}: ` }),
    el("span", { class: "alert-message", text: message }),
    retry ? el("span", { class: "alert-retry", text: ` ${retry}` }) : null,
    code ? el("small", { class: "alert-code", text: code }) : null,
  ];
  region.replaceChildren(...parts.filter(Boolean));
  region.dataset.status = String(err.status ?? "");
  region.hidden = false;
}

function clearError(region) {
  region.hidden = true;
  region.replaceChildren();
  delete region.dataset.status;
}

// ---------------------------------------------------------------------------------------------
// Tabs (WAI-ARIA tabs pattern: arrow keys, Home and End move between tabs)

const tabs = [...document.querySelectorAll('[role="tab"]')];

function selectTab(tab, { focus = false } = {}) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  history.replaceState(null, "", `#${tab.id.replace("tab-", "")}`);
}

for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    const index = tabs.indexOf(tab);
    const next = {
      ArrowRight: tabs[(index + 1) % tabs.length],
      ArrowLeft: tabs[(index - 1 + tabs.length) % tabs.length],
      Home: tabs[0],
      End: tabs[tabs.length - 1],
    }[event.key];
    if (next) {
      event.preventDefault();
      selectTab(next, { focus: true });
    }
  });
}

function tabFromHash() {
  const tab = document.getElementById(`tab-${location.hash.slice(1)}`);
  if (tab && tabs.includes(tab)) selectTab(tab);
}
window.addEventListener("hashchange", tabFromHash);
tabFromHash();

// ---------------------------------------------------------------------------------------------
// Decoding options: built from one list, read back into the request body

const OPTION_FIELDS = [
  { name: "beam_size", label: "Beam size", min: 1, step: 1, placeholder: "1", hint: "1 = greedy", views: ["translate", "chat"] },
  { name: "n_best", label: "N-best", min: 1, step: 1, placeholder: "1", hint: "alternatives, ≤ beam size", views: ["translate"] },
  { name: "length_penalty", label: "Length penalty", min: 0, step: 0.1, placeholder: "model's", hint: "ranks beams", views: ["translate", "chat"] },
  { name: "max_length", label: "Max length", min: 1, step: 1, placeholder: "auto", hint: "generated tokens", views: ["translate", "chat"] },
  { name: "mmi_weight", label: "MMI weight", min: 0, max: 1, step: 0.1, placeholder: "model's", hint: "reranks beams by p(message | reply)", views: ["chat"] },
];
const SAMPLING_FIELDS = [
  { name: "temperature", label: "Temperature", min: 0.05, step: 0.05, placeholder: "1.0" },
  { name: "top_k", label: "Top-k", min: 0, step: 1, placeholder: "0 (off)" },
  { name: "top_p", label: "Top-p", min: 0.05, max: 1, step: 0.05, placeholder: "1.0 (off)" },
  { name: "seed", label: "Seed", min: 0, step: 1, placeholder: "random" },
];

function numberField(view, spec) {
  const id = `${view}-${spec.name}`;
  const hintId = spec.hint ? `${id}-hint` : null;
  return el(
    "div",
    { class: "field" },
    el("label", { for: id, text: spec.label }),
    el("input", {
      id,
      type: "number",
      inputmode: "decimal",
      "data-field": spec.name,
      "data-label": spec.label,
      min: spec.min,
      max: spec.max,
      step: spec.step,
      placeholder: spec.placeholder,
      "aria-describedby": hintId,
    }),
    spec.hint ? el("small", { id: hintId, class: "hint", text: spec.hint }) : null,
  );
}

function buildOptions(container) {
  const view = container.dataset.options;
  const grid = el("div", { class: "options-grid" });
  for (const spec of OPTION_FIELDS.filter((f) => f.views.includes(view))) grid.append(numberField(view, spec));
  const sampleId = `${view}-sample`;
  const sampling = el(
    "fieldset",
    { class: "sampling" },
    el(
      "legend",
      {},
      el("input", { type: "checkbox", id: sampleId, "data-field": "sample" }),
      el("label", { for: sampleId, text: " Sample instead of taking the most likely token" }),
    ),
    el("div", { class: "options-grid" }, ...SAMPLING_FIELDS.map((spec) => numberField(view, spec))),
  );
  // Temperature, top-k, top-p and seed only apply when sampling: disabled (and not sent) otherwise.
  const checkbox = sampling.querySelector(`#${sampleId}`);
  const syncSampling = () => {
    for (const input of sampling.querySelectorAll(".options-grid input")) input.disabled = !checkbox.checked;
    sampling.classList.toggle("off", !checkbox.checked);
  };
  checkbox.addEventListener("change", syncSampling);
  syncSampling();
  container.replaceChildren(grid, sampling);
}

/** The options the user filled in (empty fields keep the server's defaults). */
function readOptions(container) {
  const options = {};
  for (const input of container.querySelectorAll("[data-field]")) {
    if (input.disabled) continue;
    if (input.type === "checkbox") {
      if (input.checked) options[input.dataset.field] = true;
    } else if (input.validity.badInput) {
      throw new ApiError(0, "invalid_input", `${input.dataset.label}: enter a number`);
    } else if (input.value !== "") {
      options[input.dataset.field] = Number(input.value);
    }
  }
  return options;
}

for (const container of document.querySelectorAll("[data-options]")) buildOptions(container);

// ---------------------------------------------------------------------------------------------
// Models: GET /models fills the pickers and the comparison table; refreshed while any is loading

let models = [];
let modelsTimer = null;

function modelTarget(select) {
  // "pair:de:en" -> {source_lang, target_lang}; "lang:en" -> {language}; "model:name" -> {model};
  // "to:en" -> {target_lang} and "detect:" -> {}: the server identifies the text's language
  const [kind, a, b] = select.value.split(":");
  if (kind === "pair") return { source_lang: a, target_lang: b };
  if (kind === "to") return { target_lang: a };
  if (kind === "lang") return { language: a };
  if (kind === "model") return { model: a };
  return {};
}

function statusSuffix(model) {
  return model.status === "ready" ? "" : ` (${model.status})`;
}

function fillPicker(select, task) {
  const previous = select.value;
  const ofTask = models.filter((m) => m.task === task);
  const defaults = el("optgroup", { label: task === "translate" ? "Language pair (server default)" : "Language (server default)" });
  for (const model of ofTask) {
    for (const key of model.default_for || []) {
      const [keyTask, langs] = key.split(":");
      if (keyTask !== task) continue;
      if (task === "translate") {
        const [src, tgt] = langs.split("-");
        defaults.append(
          el("option", { value: `pair:${src}:${tgt}`, text: `${languageName(src)} → ${languageName(tgt)} (${model.name})` }),
        );
      } else {
        defaults.append(el("option", { value: `lang:${langs}`, text: `${languageName(langs)} (${model.name})` }));
      }
    }
  }
  const detect = el("optgroup", { label: "Detect the language of the text" });
  if (task === "translate") {
    const targets = [...new Set(ofTask.filter((m) => m.status === "ready").map((m) => m.target_lang))];
    for (const tgt of targets) detect.append(el("option", { value: `to:${tgt}`, text: `Detect → ${languageName(tgt)}` }));
  } else if (ofTask.some((m) => m.status === "ready")) {
    detect.append(el("option", { value: "detect:", text: "Detect the language" }));
  }
  const byName = el("optgroup", { label: "Model" });
  for (const model of ofTask) {
    const langs = task === "translate" ? `${model.source_lang}→${model.target_lang}` : model.source_lang;
    byName.append(
      el("option", {
        value: `model:${model.name}`,
        text: `${model.name} · ${langs} · ${model.architecture || "?"}${statusSuffix(model)}`,
      }),
    );
  }
  // Chat starts on "detect": a message in another language than the picked one gets a reply from the wrong model
  const groups = task === "chat" ? [detect, defaults, byName] : [defaults, detect, byName];
  select.replaceChildren(...groups.filter((g) => g.children.length));
  if (!select.options.length) select.append(el("option", { value: "", text: `no ${task} model loaded` }));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function bleu(model, mode) {
  const value = model.evaluation && model.evaluation[mode] && model.evaluation[mode].bleu;
  return typeof value === "number" ? value.toFixed(1) : null;
}

function compareModels() {
  const order = (m) => (ARCHITECTURES[m.architecture] ? ARCHITECTURES[m.architecture].order : 9);
  return models
    .filter((m) => m.task === "translate" && m.source_lang === "de" && m.target_lang === "en")
    .sort((a, b) => order(a) - order(b) || a.name.localeCompare(b.name));
}

function fillCompareRows() {
  const tbody = $("#compare-rows");
  const rows = compareModels().map((model) => {
    const existing = tbody.querySelector(`tr[data-model="${CSS.escape(model.name)}"]`);
    if (existing) {
      existing.querySelector(".model-status").textContent = statusSuffix(model);
      return existing;
    }
    const greedy = bleu(model, "greedy");
    const beam = bleu(model, "beam");
    const arch = ARCHITECTURES[model.architecture];
    return el(
      "tr",
      { "data-model": model.name },
      el(
        "th",
        { scope: "row" },
        el("span", { class: "model-name", text: model.name }),
        el("small", { class: "model-status", text: statusSuffix(model) }),
        el("small", { class: "model-version", text: `v${model.version}` }),
      ),
      el(
        "td",
        { class: "architecture" },
        el("code", { text: model.architecture || "unknown" }),
        arch ? el("small", { text: arch.label }) : null,
      ),
      el(
        "td",
        { class: "bleu" },
        greedy || beam
          ? `${greedy ?? "–"} / ${beam ?? "–"}`
          : el("span", { class: "muted", text: "not evaluated" }),
      ),
      el("td", { class: "output", lang: "en" }, el("span", { class: "muted", text: "–" })),
      el("td", { class: "score num" }, "–"),
      el("td", { class: "elapsed num" }, "–"),
    );
  });
  if (rows.length) tbody.replaceChildren(...rows);
  else tbody.replaceChildren(el("tr", { class: "placeholder" }, el("td", { colspan: 6, text: "No German → English model is loaded." })));
}

function updateServerStatus() {
  const ready = models.filter((m) => m.status === "ready").length;
  const loading = models.filter((m) => m.status === "loading").length;
  const failed = models.filter((m) => m.status === "failed").length;
  const parts = [`${ready} of ${models.length} models ready`];
  if (loading) parts.push(`${loading} loading`);
  if (failed) parts.push(`${failed} failed`);
  const status = $("#server-status");
  status.textContent = parts.join(", ");
  status.dataset.state = failed ? "warn" : loading ? "loading" : "ok";
}

async function loadModels() {
  clearTimeout(modelsTimer);
  try {
    const response = await api("/models");
    models = (await response.json()).models;
    fillPicker($("#translate-model"), "translate");
    fillPicker($("#chat-model"), "chat");
    fillCompareRows();
    updateServerStatus();
    if (models.some((m) => m.status === "loading")) modelsTimer = setTimeout(loadModels, 2000);
  } catch (err) {
    const status = $("#server-status");
    status.dataset.state = "warn";
    if (err.status === 401) {
      // The question was turned down: ask again only when the person wants to.
      status.textContent = "This server asks for an API key.";
      $("#key-button").hidden = false;
      return;
    }
    status.textContent = `Cannot list the models: ${err.message}. Retrying…`;
    modelsTimer = setTimeout(loadModels, 5000);
  }
}

$("#key-button").addEventListener("click", () => {
  $("#key-button").hidden = true;
  loadModels();
});

// ---------------------------------------------------------------------------------------------
// Attention: a translation's matrix ("return_attention": true) as a heatmap. A grid with the
// output pieces down and the source pieces across; each cell's shade is an SVG attribute (the
// page's Content-Security-Policy allows no inline styles). Pointing at an output piece lights up
// the source pieces it looked at, and the reverse. One tab stop: the arrow keys, Home and End
// move between the pieces and the cells (roving tabindex, as in the WAI-ARIA grid pattern).

const SVG_NS = "http://www.w3.org/2000/svg";
const LINK_LEVELS = [0.1, 0.25, 0.5, 0.75]; // weight thresholds of the classes link-1 .. link-4

function pieceText(piece) {
  return piece.replace(/^▁/, "") || "␣"; // "▁" starts a word in SentencePiece
}

function percent(weight) {
  return `${Math.round(weight * 100)}%`;
}

function argmax(values) {
  return values.reduce((best, value, i) => (value > values[best] ? i : best), 0);
}

function shade(weight) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 1 1");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  const rect = document.createElementNS(SVG_NS, "rect");
  rect.setAttribute("width", "1");
  rect.setAttribute("height", "1");
  rect.setAttribute("fill-opacity", String(weight));
  svg.append(rect);
  return svg;
}

function attentionGrid({ source, target, weights }, lang, sourceLang) {
  const src = source.map(pieceText);
  const tgt = target.map(pieceText);
  const column = (j) => weights.map((row) => row[j]);
  const head = el(
    "tr",
    {},
    el("td", { class: "corner" }),
    ...src.map((piece, j) => {
      const i = argmax(column(j));
      return el(
        "th",
        {
          scope: "col",
          class: "src",
          lang: sourceLang,
          tabindex: -1,
          "data-row": -1,
          "data-col": j,
          "aria-label": `source “${piece}”: most looked at for “${tgt[i]}” (${percent(weights[i][j])})`,
        },
        el("span", { text: piece }),
      );
    }),
  );
  const rows = tgt.map((piece, i) => {
    const j = argmax(weights[i]);
    return el(
      "tr",
      {},
      el("th", {
        scope: "row",
        class: "tgt",
        lang,
        tabindex: -1,
        "data-row": i,
        "data-col": -1,
        "aria-label": `output “${piece}”: looked most at “${src[j]}” (${percent(weights[i][j])})`,
        text: piece,
      }),
      ...weights[i].map((weight, j) =>
        el(
          "td",
          { tabindex: -1, "data-row": i, "data-col": j, "aria-label": `“${piece}” ← “${src[j]}”: ${percent(weight)}` },
          shade(weight),
        ),
      ),
    );
  });
  const grid = el(
    "table",
    { class: "attention-grid", role: "grid", "aria-readonly": "true", "aria-label": "Attention: output pieces down, source pieces across" },
    el("thead", {}, head),
    el("tbody", {}, ...rows),
  );
  (grid.querySelector("th.tgt") || grid.querySelector("th.src")).tabIndex = 0;
  return grid;
}

/** Light up what the piece or cell at (row, col) links to; row or col -1 is a source or output piece. */
function highlightAttention(figure, weights, row, col) {
  for (const node of figure.querySelectorAll(".on, [class*='link-']")) {
    node.classList.remove("on", "link-1", "link-2", "link-3", "link-4");
  }
  const readout = $(".attention-readout", figure);
  if (row === null) {
    readout.textContent = readout.dataset.hint;
    return;
  }
  const cell = figure.querySelector(`[data-row="${row}"][data-col="${col}"]`);
  const label = (node) => node.getAttribute("aria-label");
  cell.classList.add("on");
  const link = (node, weight) => {
    const level = LINK_LEVELS.filter((t) => weight >= t).length;
    if (level) node.classList.add(`link-${level}`);
  };
  if (row >= 0 && col >= 0) {
    figure.querySelector(`th.tgt[data-row="${row}"]`).classList.add("on");
    figure.querySelector(`th.src[data-col="${col}"]`).classList.add("on");
  } else if (row >= 0) {
    figure.querySelectorAll("th.src").forEach((th, j) => link(th, weights[row][j]));
  } else {
    figure.querySelectorAll("th.tgt").forEach((th, i) => link(th, weights[i][col]));
  }
  readout.textContent = label(cell);
}

function moveInGrid(grid, from, key, rows, cols) {
  let row = Number(from.dataset.row);
  let col = Number(from.dataset.col);
  if (key === "ArrowDown") row = Math.min(row + 1, rows - 1);
  else if (key === "ArrowUp") row = Math.max(row - 1, col < 0 ? 0 : -1);
  else if (key === "ArrowRight") col = Math.min(col + 1, cols - 1);
  else if (key === "ArrowLeft") col = Math.max(col - 1, row < 0 ? 0 : -1);
  else if (key === "Home") col = row < 0 ? 0 : -1;
  else if (key === "End") col = cols - 1;
  else return null;
  return grid.querySelector(`[data-row="${row}"][data-col="${col}"]`);
}

function attentionView(attention, lang, sourceLang) {
  const hint = "Point at or focus a piece (Tab, then the arrow keys) to see where the model looked.";
  const figure = el("figure", { class: "attention" });
  const caption = el("figcaption", { text: "Attention: each output piece (down) over the source pieces (across)" });
  if (!attention.target.length) {
    figure.append(caption, el("p", { class: "muted", text: "No output pieces." }));
    return figure;
  }
  const grid = attentionGrid(attention, lang, sourceLang);
  const readout = el("p", { class: "attention-readout", "data-hint": hint, text: hint });
  figure.append(caption, el("div", { class: "attention-scroll" }, grid), readout);
  const position = (node) => (node ? [Number(node.dataset.row), Number(node.dataset.col)] : null);
  const show = (node) => highlightAttention(figure, attention.weights, ...(position(node) || [null, null]));
  const target = (event) => event.target.closest("[data-row]");
  grid.addEventListener("mouseover", (event) => show(target(event)));
  grid.addEventListener("mouseleave", () => show(grid.contains(document.activeElement) ? document.activeElement : null));
  grid.addEventListener("focusin", (event) => show(target(event)));
  grid.addEventListener("focusout", (event) => {
    if (!grid.contains(event.relatedTarget)) show(null);
  });
  grid.addEventListener("keydown", (event) => {
    const from = target(event);
    const next = from && moveInGrid(grid, from, event.key, attention.target.length, attention.source.length);
    if (!next) return;
    event.preventDefault();
    from.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });
  return figure;
}

// ---------------------------------------------------------------------------------------------
// Translate

const translateForm = $("#translate-form");
const translateText = $("#translate-text");
const translateResult = $("#translate-result");
const translateError = $("#translate-error");

function translationView(translation, lang, source, sourceLang) {
  const view = el(
    "article",
    { class: "translation" },
    source ? el("p", { class: "source", text: source }) : null,
    el("p", { class: "output", lang, text: translation.text }),
    el("p", {
      class: "meta",
      text: `score ${formatScore(translation.score, translation.tokens)} · ${translation.tokens} tokens · ${translation.finish_reason}`,
    }),
  );
  if (translation.alternatives && translation.alternatives.length) {
    view.append(
      el("h3", { class: "alternatives-title", text: `${translation.alternatives.length} best alternatives` }),
      el(
        "ol",
        { class: "alternatives" },
        ...translation.alternatives.map((alt) =>
          el("li", {}, el("span", { lang, text: alt.text }), el("span", { class: "score", text: formatScore(alt.score) })),
        ),
      ),
    );
  }
  if (translation.attention) view.append(attentionView(translation.attention, lang, sourceLang));
  return view;
}

translateForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const submit = $("#translate-submit");
  if (submit.disabled) return;
  clearError(translateError);
  const started = performance.now();
  try {
    const text = translateText.value;
    const lines = text.split("\n").map((line) => line.trim()).filter(Boolean);
    const input = lines.length > 1 ? { texts: lines } : { text };
    const body = { ...input, ...modelTarget($("#translate-model")), ...readOptions($("[data-options=translate]")) };
    if ($("#translate-attention").checked) body.return_attention = true;
    submit.disabled = true;
    $("#translate-busy").hidden = false;
    translateResult.setAttribute("aria-busy", "true");
    const data = await (await api("/translate", body)).json();
    const model = models.find((m) => m.name === data.model);
    const lang = (model && model.target_lang) || "";
    translateResult.replaceChildren(
      // A batch shows each source line above its translation.
      ...data.translations.map((t, i) => translationView(t, lang, input.texts ? input.texts[i] : null, data.source_lang)),
      el("p", {
        class: "meta footnote",
        text: `${data.model} v${data.version} · ${data.usage.input_tokens} → ${data.usage.output_tokens} tokens · ${formatMs(performance.now() - started)}`,
      }),
    );
  } catch (err) {
    showError(translateError, err);
  } finally {
    submit.disabled = false;
    $("#translate-busy").hidden = true;
    translateResult.removeAttribute("aria-busy");
  }
});

translateText.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    translateForm.requestSubmit();
  }
});

// ---------------------------------------------------------------------------------------------
// Chat: POST /chat with "stream": true, read as Server-Sent Events from a ReadableStream
// (EventSource cannot POST).

/** Yields {event, data} for each SSE frame of a fetch response body. */
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Normalize line ends; a lone "\r" at the end may still become "\r\n" with the next chunk.
      buffer = (buffer + value).replace(/\r\n/g, "\n").replace(/\r(?=[\s\S])/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of frame.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const fieldValue = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = fieldValue;
          else if (field === "data") data.push(fieldValue);
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

const chatForm = $("#chat-form");
const chatLog = $("#chat-log");
const chatMessage = $("#chat-message");
const chatError = $("#chat-error");
const chatSend = $("#chat-send");
const chatStop = $("#chat-stop");
let chatHistory = [];
let chatAbort = null;

function chatBubble(role, text, lang) {
  const bubble = el(
    "li",
    { class: `msg ${role}` },
    el("span", { class: "who", text: role === "user" ? "You" : "Assistant" }),
    el("p", { class: "text", lang, text }),
  );
  $(".chat-empty", chatLog)?.remove();
  chatLog.append(bubble);
  chatLog.scrollTop = chatLog.scrollHeight;
  return bubble;
}

function chatLanguage() {
  const target = modelTarget($("#chat-model"));
  if (target.language) return target.language;
  const model = models.find((m) => m.name === target.model);
  return (model && model.target_lang) || "";
}

async function streamReply(body, bubble) {
  const textEl = $(".text", bubble);
  const response = await api("/chat", body, { signal: chatAbort.signal });
  for await (const { event, data } of sseEvents(response)) {
    if (event === "token") {
      textEl.textContent += data.text;
      chatLog.scrollTop = chatLog.scrollHeight;
    } else if (event === "done") {
      return data;
    } else if (event === "error") {
      const error = data.error || {};
      const code = error.code || "internal_error";
      throw new ApiError(CODE_STATUS[code] || 500, code, error.message || "the reply failed", { details: error.details });
    }
  }
  throw new ApiError(0, "stream_ended", "the connection closed before the reply was complete");
}

chatForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (chatAbort) return; // one reply at a time
  clearError(chatError);
  let options;
  try {
    options = readOptions($("[data-options=chat]"));
  } catch (err) {
    showError(chatError, err);
    return;
  }
  const message = chatMessage.value;
  const body = { message, history: chatHistory, stream: true, ...modelTarget($("#chat-model")), ...options };
  const lang = chatLanguage();
  const userBubble = chatBubble("user", message, lang);
  const bubble = chatBubble("assistant", "", lang);
  bubble.setAttribute("aria-busy", "true");
  bubble.classList.add("streaming");
  chatAbort = new AbortController();
  chatSend.disabled = true;
  chatStop.hidden = false;
  const started = performance.now();
  try {
    const done = await streamReply(body, bubble);
    $(".text", bubble).textContent = done.reply; // the authoritative text
    bubble.append(
      el("small", {
        class: "meta",
        text: `${done.model} · score ${formatScore(done.score, done.tokens)} · ${done.tokens} tokens · ${done.finish_reason} · ${formatMs(performance.now() - started)}`,
      }),
    );
    chatHistory = [...chatHistory, { role: "user", content: message }, { role: "assistant", content: done.reply }];
    chatMessage.value = "";
  } catch (err) {
    if (err.name === "AbortError") {
      bubble.classList.add("stopped");
      bubble.append(el("small", { class: "meta", text: "stopped" }));
    } else if (!$(".text", bubble).textContent) {
      // Nothing was generated (validation error, overload...): take the exchange back, keep the text.
      userBubble.remove();
      bubble.remove();
      showError(chatError, err);
    } else {
      bubble.classList.add("failed");
      showError(chatError, err);
    }
  } finally {
    bubble.removeAttribute("aria-busy");
    bubble.classList.remove("streaming");
    chatAbort = null;
    chatSend.disabled = false;
    chatStop.hidden = true;
    chatMessage.focus();
  }
});

chatMessage.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    chatForm.requestSubmit();
  } else if (event.key === "Escape" && chatAbort) {
    chatAbort.abort();
  }
});
chatStop.addEventListener("click", () => chatAbort?.abort());

$("#chat-clear").addEventListener("click", () => {
  chatAbort?.abort();
  chatHistory = [];
  chatLog.replaceChildren(el("li", { class: "chat-empty", text: "No messages yet. Say hello!" }));
  clearError(chatError);
  chatMessage.focus();
});
$("#chat-model").addEventListener("change", () => $("#chat-clear").click());

// ---------------------------------------------------------------------------------------------
// Compare: the same sentence through every de->en model, one request each, in parallel

const compareForm = $("#compare-form");
const compareError = $("#compare-error");

async function compareOne(row, body) {
  const cells = { output: $(".output", row), score: $(".score", row), elapsed: $(".elapsed", row) };
  cells.output.replaceChildren(el("span", { class: "muted", text: "translating…" }));
  cells.score.textContent = cells.elapsed.textContent = "";
  row.classList.remove("failed");
  row.setAttribute("aria-busy", "true");
  const started = performance.now();
  try {
    // Only attention models have weights to show (the others would answer 422).
    const model = models.find((m) => m.name === row.dataset.model);
    const attention = body.return_attention && model && model.architecture === "attention";
    const request = { ...body, model: row.dataset.model, return_attention: attention || undefined };
    const data = await (await api("/translate", request)).json();
    const best = data.translations[0];
    cells.output.textContent = best.text;
    if (best.attention) cells.output.append(attentionView(best.attention, "en", data.source_lang));
    else if (body.return_attention) cells.output.append(el("small", { class: "muted", text: "no attention: one fixed source vector" }));
    cells.score.textContent = formatScore(best.score);
    return null;
  } catch (err) {
    row.classList.add("failed");
    const { title, message } = describeError(err);
    cells.output.replaceChildren(el("span", { class: "error-text", text: `${title}: ${message}` }));
    return err;
  } finally {
    cells.elapsed.textContent = formatMs(performance.now() - started);
    row.removeAttribute("aria-busy");
  }
}

compareForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const submit = $("#compare-submit");
  if (submit.disabled) return;
  clearError(compareError);
  const rows = [...document.querySelectorAll("#compare-rows tr[data-model]")];
  if (!rows.length) {
    showError(compareError, new ApiError(0, "no_models", "no German → English model is loaded"));
    return;
  }
  const body = { text: $("#compare-text").value };
  const beam = $("#compare-beam");
  if (beam.validity.badInput) {
    showError(compareError, new ApiError(0, "invalid_input", "Beam size: enter a number"));
    return;
  }
  if (beam.value !== "") body.beam_size = Number(beam.value);
  if ($("#compare-attention").checked) body.return_attention = true;
  submit.disabled = true;
  const status = $("#compare-status");
  status.textContent = `Translating with ${rows.length} models…`;
  const errors = (await Promise.all(rows.map((row) => compareOne(row, body)))).filter(Boolean);
  submit.disabled = false;
  status.textContent = `${rows.length - errors.length} of ${rows.length} models answered.`;
  if (errors.length) {
    // One alert for the first error; the rows show each model's own.
    showError(compareError, errors[0]);
  }
});

loadModels();
