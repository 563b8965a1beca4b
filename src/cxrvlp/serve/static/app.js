// The page of `cxrvlp serve`: upload a radiograph, show the report, the findings with their
// heat maps, the 29 region boxes, and answer yes/no questions. Plain JavaScript, no build
// step; every request goes to this page's own origin.
(function () {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  const state = {
    frontal: null, // the chosen File objects
    lateral: null,
    apiKey: null, // kept in memory only, never stored
    retry: null, // the request a 401 interrupted, resent once a key is given
    result: null,
    pictureUrl: null, // object URL of the analysed PNG/JPEG
    heatmaps: new Map(), // heatmap_url -> object URL
    selected: -1,
    modelLoaded: false,
    labelGroups: null, // regions sharing a box, one label each
    regionCaption: "", // the viewer's caption when no finding is selected
    busy: 0,
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // ---- requests -----------------------------------------------------------------------------
  function headers() {
    return state.apiKey ? { "X-API-Key": state.apiKey } : {};
  }

  async function request(path, options) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: headers() });
    } catch (err) {
      throw new ApiError(0, "network", "The service cannot be reached: is `cxrvlp serve` still running?");
    }
    if (response.ok) return response;
    let code = "http_error";
    let message = `The service answered ${response.status} ${response.statusText}.`;
    try {
      const body = await response.json();
      if (body && body.message) message = body.message;
      if (body && body.error) code = body.error;
    } catch (err) {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, code, message);
  }

  async function requestJson(path, options) {
    return (await request(path, options)).json();
  }

  // Runs an action; a 401 asks for the key and keeps the action to resend; other errors go to
  // the alert region.
  async function guarded(action) {
    try {
      await action();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        state.retry = action;
        askForKey(err.message);
      } else {
        showError(err instanceof ApiError ? err.message : `Unexpected error: ${err.message || err}`);
        if (!(err instanceof ApiError)) console.error(err);
      }
    }
  }

  function setBusy(on, text) {
    state.busy += on ? 1 : -1;
    if (on && text) $("busy-text").textContent = text;
    $("busy").hidden = state.busy === 0;
    $("analyse").disabled = state.busy > 0;
    $("ask").disabled = state.busy > 0;
  }

  async function whileBusy(text, work) {
    setBusy(true, text);
    try {
      await work();
    } finally {
      setBusy(false);
    }
  }

  // ---- alert and API key --------------------------------------------------------------------
  function showError(message) {
    $("alert").textContent = message;
  }

  function clearError() {
    $("alert").textContent = "";
  }

  function askForKey(message) {
    const form = $("key-form");
    form.hidden = false;
    if (!state.modelLoaded) $("model-line").textContent = "The model’s description needs the API key.";
    showError(state.apiKey ? "The API key was not accepted. " + message : message);
    $("api-key").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      showError("Enter the service's API key.");
      return;
    }
    state.apiKey = key;
    $("key-form").hidden = true;
    clearError();
    const retry = state.retry;
    state.retry = null;
    if (retry) guarded(retry);
  });

  // ---- the model ----------------------------------------------------------------------------
  function describeModel(info) {
    const parts = [`Model ${info.name || "unnamed"}`, `recipe ${info.recipe}`];
    if (Array.isArray(info.findings)) parts.push(`${info.findings.length} findings`);
    parts.push(info.generates_reports ? "writes reports" : "no report decoder");
    parts.push(info.region_detector ? "region detector" : "no region detector");
    if (info.version) parts.push(`cxrvlp ${info.version}`);
    $("model-line").textContent = parts.join(" · ");
    state.modelLoaded = true;
    if (info.notice) setNotice(info.notice);
  }

  function setNotice(text) {
    const notice = $("notice");
    notice.textContent = "";
    const strong = document.createElement("strong");
    const split = text.indexOf(":");
    if (split > 0) {
      strong.textContent = text.slice(0, split + 1);
      notice.append(strong, text.slice(split + 1));
    } else {
      notice.append(text);
    }
  }

  async function loadModel() {
    const info = await requestJson("/v1/model");
    describeModel(info);
  }

  // ---- choosing files -----------------------------------------------------------------------
  function fileLabel(file) {
    const kb = file.size / 1024;
    const size = kb < 1024 ? `${kb.toFixed(0)} kB` : `${(kb / 1024).toFixed(1)} MB`;
    return `${file.name} (${size})`;
  }

  function setupPicker(which) {
    const input = $(which);
    const zone = $(`${which}-drop`);

    function choose(file) {
      state[which] = file;
      zone.classList.toggle("chosen", Boolean(file));
      zone.title = file ? `Chosen: ${fileLabel(file)}` : "";
      if (which === "lateral") $("clear-lateral").hidden = !file;
      clearError();
    }

    input.addEventListener("change", () => choose(input.files[0] || null));
    zone.addEventListener("keydown", (event) => {
      if (event.target !== zone) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        input.click();
      }
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (!file) return;
      try {
        const transfer = new DataTransfer();
        transfer.items.add(file);
        input.files = transfer.files;
      } catch (err) {
        // older browsers: the input keeps its old value, the page uses `state`
      }
      choose(file);
    });
    return () => {
      input.value = "";
      choose(null);
    };
  }

  // A file dropped beside the boxes must not replace the page with the file.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());

  setupPicker("frontal");
  const clearLateral = setupPicker("lateral");
  $("clear-lateral").addEventListener("click", clearLateral);

  // ---- analysis -----------------------------------------------------------------------------
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.frontal) {
      showError("Choose a frontal image (DICOM, PNG or JPEG) first.");
      $("frontal").focus();
      return;
    }
    clearError();
    const frontal = state.frontal;
    const lateral = state.lateral;
    guarded(() => whileBusy("Analysing…", () => analyse(frontal, lateral)));
  });

  async function analyse(frontal, lateral) {
    const body = new FormData();
    body.append("image", frontal, frontal.name);
    if (lateral) body.append("lateral", lateral, lateral.name);
    const result = await requestJson("/v1/analyze", { method: "POST", body });
    showResult(result, frontal);
  }

  function showResult(result, file) {
    state.result = result;
    state.selected = -1;
    for (const url of state.heatmaps.values()) URL.revokeObjectURL(url);
    state.heatmaps.clear();
    if (result.notice) setNotice(result.notice);
    showImage(result, file);
    drawRegions(result);
    showReport(result);
    showFindings(result);
    showDetails(result);
  }

  function showImage(result, file) {
    const { width, height, kind } = result.image;
    const stage = $("stage");
    stage.style.setProperty("--ratio", `${width} / ${height}`);
    stage.style.setProperty("--ratio-value", String(width / height));
    const picture = $("picture");
    if (state.pictureUrl) URL.revokeObjectURL(state.pictureUrl);
    state.pictureUrl = null;
    if (kind === "dicom") {
      picture.hidden = true;
      picture.removeAttribute("src");
      $("dicom-note").hidden = false;
    } else {
      state.pictureUrl = URL.createObjectURL(file);
      picture.src = state.pictureUrl;
      picture.hidden = false;
      $("dicom-note").hidden = true;
    }
    $("heatmap").hidden = true;
    $("heatmap").removeAttribute("src");
    $("empty").hidden = true;
    stage.hidden = false;
    const views = result.image.lateral ? " with a lateral view" : "";
    $("viewer-title").textContent = `${file.name}${views}`;
  }

  // The boxes are in the image's pixels: the SVG's viewBox is the image, stretched over the
  // displayed picture, so the boxes follow any display size.
  function drawRegions(result) {
    const svg = $("regions");
    const { width, height } = result.image;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.textContent = "";
    const groups = new Map(); // regions with the same box share one label
    result.regions.forEach((region, index) => {
      const [x1, y1, x2, y2] = region.box;
      const rect = document.createElementNS(SVG_NS, "rect");
      rect.setAttribute("x", x1);
      rect.setAttribute("y", y1);
      rect.setAttribute("width", Math.max(0, x2 - x1));
      rect.setAttribute("height", Math.max(0, y2 - y1));
      rect.setAttribute("class", region.fallback ? "region fallback" : "region");
      rect.setAttribute("vector-effect", "non-scaling-stroke");
      rect.dataset.region = region.name;
      rect.dataset.index = String(index);
      const title = document.createElementNS(SVG_NS, "title");
      title.textContent = region.fallback ? `${region.name} (fallback)` : region.name;
      rect.append(title);
      svg.append(rect);
      const key = region.box.join(",");
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(region);
    });
    state.labelGroups = [...groups.values()];
    layoutLabels();
    const fallbacks = result.regions.filter((r) => r.fallback).length;
    let caption = `${result.regions.length} regions from the ${result.region_source}`;
    if (result.region_source === "whole image") caption += " (no region detector: every box is the whole image, a fallback)";
    else if (fallbacks) caption += `; ${fallbacks} dashed boxes are fallbacks the detector did not find`;
    state.regionCaption = caption + ".";
    $("viewer-caption").textContent = state.regionCaption;
    applyRegionToggle();
  }

  // Labels keep a readable screen size (12 px text), so they are laid out again whenever the
  // picture's displayed size changes; a label that would cover another is left out (the
  // box's tooltip still names it).
  function layoutLabels() {
    const svg = $("regions");
    const result = state.result;
    if (!result || !state.labelGroups) return;
    for (const old of svg.querySelectorAll("g.label")) old.remove();
    const { width, height } = result.image;
    const shown = svg.getBoundingClientRect().width;
    if (!shown) return;
    const size = (12 * width) / shown; // 12 screen pixels in the image's units
    const placed = [];
    for (const regions of state.labelGroups) {
      const [x1, y1, x2, y2] = regions[0].box;
      const fallback = regions.every((r) => r.fallback);
      let text = regions.length === 1 ? regions[0].name : `${regions.length} regions`;
      if (fallback) text += " (fallback)";
      const w = text.length * size * 0.56 + size * 0.7;
      const h = size * 1.45;
      const spots = [
        [x1, y1],
        [x1, y2 - h],
        [x2 - w, y1],
      ].map(([x, y]) => [Math.min(Math.max(0, x), width - w), Math.min(Math.max(0, y), height - h)]);
      const spot = spots.find((s) => placed.every((p) => !overlaps(p, [s[0], s[1], w, h])));
      if (!spot) continue;
      const [x, y] = spot;
      placed.push([x, y, w, h]);
      const label = document.createElementNS(SVG_NS, "g");
      label.setAttribute("class", fallback ? "label fallback" : "label");
      const back = document.createElementNS(SVG_NS, "rect");
      back.setAttribute("x", x);
      back.setAttribute("y", y);
      back.setAttribute("width", w);
      back.setAttribute("height", h);
      const words = document.createElementNS(SVG_NS, "text");
      words.setAttribute("x", x + size * 0.35);
      words.setAttribute("y", y + size * 1.08);
      words.setAttribute("font-size", size);
      words.textContent = text;
      label.append(back, words);
      svg.append(label);
    }
  }

  if (window.ResizeObserver) new ResizeObserver(layoutLabels).observe($("regions"));
  else window.addEventListener("resize", layoutLabels);

  function overlaps(a, b) {
    return a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
  }

  function applyRegionToggle() {
    $("regions").style.display = $("show-regions").checked ? "" : "none";
  }

  $("show-regions").addEventListener("change", applyRegionToggle);

  function showReport(result) {
    const report = $("report");
    if (result.report === null || result.report === undefined) {
      report.textContent = "This model has no report decoder: it writes no report.";
      report.classList.add("muted");
    } else {
      report.textContent = result.report || "(The model generated an empty report.)";
      report.classList.remove("muted");
    }
  }

  function percent(value) {
    return `${(100 * value).toFixed(1)}%`;
  }

  function showFindings(result) {
    const table = $("findings");
    const body = table.tBodies[0];
    body.textContent = "";
    const hasEcls = result.findings.some((f) => f.ecls !== null && f.ecls !== undefined);
    table.classList.toggle("no-ecls", !hasEcls);
    $("findings-empty").hidden = true;
    $("findings-wrap").hidden = false;
    result.findings.forEach((finding, index) => {
      const row = body.insertRow();
      row.dataset.index = String(index);

      const nameCell = row.insertCell();
      const button = document.createElement("button");
      button.type = "button";
      button.className = "finding";
      button.textContent = finding.name;
      button.setAttribute("aria-pressed", "false");
      button.title = finding.has_heatmap ? "Show this finding's heat map" : "No heat map for this finding";
      nameCell.append(button);

      const scoreCell = row.insertCell();
      scoreCell.className = "num score";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.setProperty("--fill", percent(finding.score));
      bar.setAttribute("aria-hidden", "true");
      scoreCell.append(bar, document.createTextNode(percent(finding.score)));

      const eclsCell = row.insertCell();
      eclsCell.className = "num ecls-col";
      eclsCell.textContent = finding.ecls === null || finding.ecls === undefined ? "–" : finding.ecls.toFixed(3);

      const regionCell = row.insertCell();
      regionCell.className = "regions-cell";
      regionCell.textContent = finding.regions.length ? finding.regions.map((r) => r.name).join(", ") : "–";
      regionCell.title = finding.regions.map((r) => `${r.name}: weight ${percent(r.weight)}`).join("\n");

      row.addEventListener("click", (event) => {
        if (event.target !== button) selectFinding(index);
      });
      button.addEventListener("click", () => selectFinding(index));
    });
  }

  function selectFinding(index) {
    const result = state.result;
    if (!result) return;
    const next = state.selected === index ? -1 : index; // a second click clears the selection
    state.selected = next;
    for (const row of $("findings").tBodies[0].rows) {
      const on = Number(row.dataset.index) === next;
      row.classList.toggle("selected", on);
      row.querySelector("button.finding").setAttribute("aria-pressed", on ? "true" : "false");
    }
    const heat = $("heatmap");
    const finding = next >= 0 ? result.findings[next] : null;
    const top = new Set(finding ? finding.regions.map((r) => r.name) : []);
    for (const rect of $("regions").querySelectorAll("rect.region")) {
      rect.classList.toggle("top", top.has(rect.dataset.region));
    }
    if (!finding || !finding.has_heatmap || !finding.heatmap_url) {
      heat.hidden = true;
      heat.removeAttribute("src");
      $("viewer-caption").textContent = state.regionCaption;
      if (finding) $("viewer-caption").textContent = `${finding.name}: no heat map (this model does not ground findings).`;
      return;
    }
    guarded(async () => {
      const url = await heatmapUrl(finding.heatmap_url);
      if (state.result !== result || state.selected !== next) return; // superseded meanwhile
      heat.alt = `Heat map of ${finding.name}`;
      heat.src = url;
      heat.hidden = false;
      const where = finding.regions.map((r) => `${r.name} (${percent(r.weight)})`).join(", ");
      $("viewer-caption").textContent = `${finding.name} (${percent(finding.score)}): grounded on ${where || "the whole image"}.`;
    });
  }

  // Heat maps are fetched (not linked) so that the API key header goes with them.
  async function heatmapUrl(path) {
    if (!state.heatmaps.has(path)) {
      const blob = await (await request(path, { method: "GET" })).blob();
      state.heatmaps.set(path, URL.createObjectURL(blob));
    }
    return state.heatmaps.get(path);
  }

  function fact(list, term, value) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }

  function showDetails(result) {
    const model = $("model-details");
    model.textContent = "";
    $("details-empty").hidden = true;
    const m = result.model || {};
    fact(model, "Model", `${m.name || "unnamed"} (recipe ${m.recipe})`);
    const training = [m.init, m.step !== null && m.step !== undefined ? `step ${m.step}` : null];
    if (m.finetuned) training.push(`fine-tuned: ${m.finetuned}`);
    fact(model, "Weights", training.filter(Boolean).join(", ") || "–");
    fact(model, "Image", `${result.image.width} × ${result.image.height} ${result.image.kind.toUpperCase()}${result.image.lateral ? " + lateral" : ""}`);
    fact(model, "Regions", result.region_source);
    fact(model, "Version", `cxrvlp ${m.version || "?"}`);
    const timings = Object.entries(result.timings_ms || {}).map(
      ([name, ms]) => `${name} ${Number(ms).toFixed(0)} ms`,
    );
    fact(model, "Timings", timings.join(" · ") || "–");
  }

  // ---- questions ----------------------------------------------------------------------------
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim(); // an empty one gets the service's message
    if (!state.frontal) {
      showError("Choose a frontal image first: the question is about it.");
      $("frontal").focus();
      return;
    }
    clearError();
    const file = state.frontal;
    guarded(() => whileBusy("Answering…", () => ask(file, question)));
  });

  async function ask(file, question) {
    const answer = $("answer");
    answer.textContent = "";
    const body = new FormData();
    body.append("image", file, file.name);
    body.append("question", question);
    const reply = await requestJson("/v1/ask", { method: "POST", body }); // errors: the alert
    const line = document.createElement("p");
    line.className = "reply";
    const word = document.createElement("strong");
    word.className = `word ${reply.answer}`;
    word.textContent = reply.answer.charAt(0).toUpperCase() + reply.answer.slice(1);
    const scores = reply.top.map((t) => `${t.answer} ${percent(t.score)}`).join(" · ");
    line.append(word, ` (${scores})`);
    const how = document.createElement("p");
    how.className = "hint";
    how.textContent = `“${reply.question}”: finding ${reply.finding}; ${reply.method}.`;
    answer.append(line, how);
  }

  guarded(loadModel);
})();
